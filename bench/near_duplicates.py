"""Calibrate the same-picture test the admin uses to pin uploads to the holdout (graft/core/likeness.py), at the
scale where look-alikes crowd it: thousands of pictures already in the holdout.

Two domains: Fashion-MNIST (small grayscale clothes; Debian's ``dataset-fashion-mnist``, which ``make setup``
installs) and the ants/bees photos in ``../shared`` (skipped with a note when absent). Per domain:

* a holdout is indexed first (``--holdout`` Fashion-MNIST train pictures; all ants/bees photos);
* recall: altered copies (JPEG q50, 0.8x resize, a 2-pixel crop, brightness +-10%) of ``--copies`` holdout
  pictures go through the index's retrieval and confirmation, as an upload does. A copy counts as pinned when
  any retrieved candidate passes the test (pinned to a look-alike is still kept out of training);
* the holdout share: ``--stream`` other, distinct pictures go through the admin's rule (the hash split at
  ``--fraction``, whose holdout pictures join the index, plus pinning). Distinct look-alikes pinned by mistake
  push the share above the configured fraction. Pins are not added back to the index here (the admin adds
  them; ``bench/scale.py`` measures that), so one stream gives every threshold.

For each residual threshold (at the default correlation floor) and each correlation floor (at the default
residual) it reports recall per alteration and the holdout share, and the least aligned correlation of a copy
with its own original. Not a timed test.

    .venv/bin/python bench/near_duplicates.py --json bench/results/near_duplicates.json
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._runs import finish_report
from graft.core.images import load_rgb
from graft.core.likeness import (
    RETRIEVE_SIMILARITY,
    RETRIEVE_TOP,
    SAME_PICTURE_CORRELATION,
    SAME_PICTURE_RESIDUAL,
    Comparison,
    Likeness,
    LikenessIndex,
    likeness,
)
from training.fashion_mnist import FASHION_MNIST_DIR, read_idx

log = logging.getLogger("bench.near_duplicates")
THRESHOLDS = (4.0, 5.0, SAME_PICTURE_RESIDUAL, 7.0, 8.0, 10.0)
# Correlation floors tried at the default residual: a low-contrast look-alike can have a small residual (its grey
# levels vary little), so the floor is what keeps it out.
FLOORS = tuple(sorted({0.95, 0.96, 0.97, 0.975, 0.98, SAME_PICTURE_CORRELATION}))
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"


def _jpeg(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=50)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


ALTERATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "jpeg50": _jpeg,
    "resize0.8": lambda im: im.resize((int(im.width * 0.8), int(im.height * 0.8)), Image.Resampling.BILINEAR),
    "crop2px": lambda im: im.crop((2, 2, im.width, im.height)),
    "bright+10%": lambda im: Image.eval(im, lambda v: min(255, int(v * 1.1))),
    "bright-10%": lambda im: Image.eval(im, lambda v: int(v * 0.9)),
}


def best_residual(
    matches: list[tuple[str, Comparison]], floor: float = SAME_PICTURE_CORRELATION
) -> tuple[float, str | None]:
    """The smallest residual among the retrieved candidates that pass the correlation floor (inf if none)."""
    best, key = float("inf"), None
    for k, c in matches:
        if c.correlation >= floor and c.residual < best:
            best, key = c.residual, k
    return best, key


def pinned_at_floors(matches: list[list[tuple[str, Comparison]]]) -> dict[str, int]:
    """How many of these would be pinned at each correlation floor, at the default residual."""
    return {f"floor{f:g}": sum(best_residual(m, f)[0] <= SAME_PICTURE_RESIDUAL for m in matches) for f in FLOORS}


def retrieval_margin(index: LikenessIndex, looks: list[Likeness], originals: list[int]) -> dict[str, float]:
    """How safely retrieval keeps each copy's original: its outline similarity (the least, against
    RETRIEVE_SIMILARITY) and its rank among every stored picture (the worst, against RETRIEVE_TOP; 0 is first)."""
    sims = index.similarities(looks)
    own = np.array([col[i] for i, col in zip(originals, sims.T, strict=True)])
    ranks = np.array([int((col > col[i]).sum()) for i, col in zip(originals, sims.T, strict=True)])
    return {"original_similarity_min": round(float(own.min()), 4), "original_rank_max": int(ranks.max()),
            "retrieve_similarity": RETRIEVE_SIMILARITY, "retrieve_top": RETRIEVE_TOP}  # fmt: skip


def recall(index: LikenessIndex, held: dict[str, Image.Image]) -> dict[str, dict[str, float]]:
    """Per alteration: the share of copies pinned at each threshold, the share whose own original is the twin, and
    the retrieval margin (the stored pictures' keys are their positions)."""
    out: dict[str, dict[str, float]] = {}
    for name, alter in ALTERATIONS.items():
        looks = [likeness(alter(img)) for img in held.values()]
        matches = [list(index.comparisons(look)) for look in looks]
        found = [best_residual(m) for m in matches]
        res = np.array([r for r, _ in found])
        row = {f"{t:g}": round(float((res <= t).mean()), 4) for t in THRESHOLDS}
        row["twin_is_original"] = round(float(np.mean([k == key for (_, k), key in zip(found, held, strict=True)])), 4)
        row.update(retrieval_margin(index, looks, [int(k) for k in held]))
        row.update({k: round(v / len(looks), 4) for k, v in pinned_at_floors(matches).items()})
        own = [c.correlation for m, key in zip(matches, held, strict=True) for k, c in m if k == key]
        row["original_correlation_min"] = round(min(own), 4) if own else float("nan")
        out[name] = row
        log.info("recall %s: %s", name, row)
    return out


def holdout_share(index: LikenessIndex, stream: list[Image.Image], keys: list[bytes], fraction: float) -> dict:
    by_hash, residuals, started, matched = 0, [], time.perf_counter(), []
    for i, img in enumerate(stream):
        look = likeness(img)
        if int(hashlib.sha256(keys[i]).hexdigest()[:8], 16) / 0x1_0000_0000 < fraction:
            index.add(f"s{i}", look)
            by_hash += 1
        else:
            matched.append(list(index.comparisons(look)))
            residuals.append(best_residual(matched[-1])[0])
    ms = 1000 * (time.perf_counter() - started) / len(stream)
    res = np.array(residuals)
    out: dict[str, object] = {"n": len(stream), "hash_split": by_hash, "holdout_at_end": len(index),
                              "ms_per_upload": round(ms, 2)}  # fmt: skip
    for t in THRESHOLDS:
        pinned = int((res <= t).sum())
        out[f"{t:g}"] = {"pinned": pinned, "share": round((by_hash + pinned) / len(stream), 4)}
    for key, pinned in pinned_at_floors(matched).items():
        out[key] = {"pinned": pinned, "share": round((by_hash + pinned) / len(stream), 4)}
    return out


Domain = tuple[list[Image.Image], list[int], list[Image.Image], list[bytes]]  # holdout, picked, stream, keys


def fashion(holdout: int, copies: int, stream: int) -> Domain:
    pixels = read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz")
    held = [Image.fromarray(x, mode="L").convert("RGB") for x in pixels[:holdout]]
    picked = random.Random(0).sample(range(holdout), copies)
    streamed = pixels[holdout : holdout + stream]
    others = [Image.fromarray(x, mode="L").convert("RGB") for x in streamed]
    return held, picked, others, [x.tobytes() for x in streamed]


def ants_bees(copies: int) -> Domain:
    files = sorted(p for p in SHARED.rglob("*.jpg"))
    images = [load_rgb(p) for p in files]
    images = [im.resize((im.width * 256 // max(im.size), im.height * 256 // max(im.size))) for im in images]
    picked = list(range(0, len(images), max(1, len(images) // copies)))[:copies]
    # The photos are both the holdout and the stream: a photo is never compared with itself.
    return images, picked, images, [p.read_bytes() for p in files]


def run_domain(name: str, held: list[Image.Image], picked: list[int], stream: list[Image.Image], keys: list[bytes],
               fraction: float) -> dict:  # fmt: skip
    """Recall against the whole domain's holdout, then the holdout share of the stream. For ants/bees the photos
    are both (``stream is held``): the share streams them through a fresh index, each against those before it."""
    started = time.perf_counter()
    index = LikenessIndex()
    for i, img in enumerate(held):
        index.add(str(i), likeness(img))
    log.info("%s: %d pictures indexed", name, len(index))
    found = recall(index, {str(i): held[i] for i in picked})
    share = holdout_share(LikenessIndex() if stream is held else index, stream, keys, fraction)
    return {"holdout": len(held), "copies": len(picked), "recall": found, "holdout_share": share,
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def main() -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False, formatter_class=fmt)
    p.add_argument("--holdout", type=int, default=16_000, help="Fashion-MNIST pictures indexed first")
    p.add_argument("--copies", type=int, default=400, help="pictures altered in each way, per domain")
    p.add_argument("--stream", type=int, default=10_000, help="distinct Fashion-MNIST uploads streamed")
    p.add_argument("--fraction", type=float, default=0.2, help="the configured holdout fraction")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not FASHION_MNIST_DIR.is_dir():
        raise SystemExit(f"{FASHION_MNIST_DIR} not found: apt-get install dataset-fashion-mnist (make setup does)")
    report: dict[str, object] = {"thresholds": THRESHOLDS, "default": SAME_PICTURE_RESIDUAL,
                                 "correlation_floor": SAME_PICTURE_CORRELATION, "fraction": args.fraction}  # fmt: skip
    fm = fashion(args.holdout, args.copies, args.stream)
    report["fashion-mnist"] = run_domain("fashion-mnist", *fm, args.fraction)
    if SHARED.is_dir():
        report["ants-bees"] = run_domain("ants-bees", *ants_bees(args.copies), args.fraction)
    else:
        log.warning("%s not found: the ants/bees domain is left out", SHARED)
    finish_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
