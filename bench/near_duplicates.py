"""Calibrate the same-picture test the admin uses to pin uploads to the holdout (graft/core/likeness.py).

Two domains: Fashion-MNIST (small grayscale clothes; Debian's ``dataset-fashion-mnist``, which ``make setup``
installs) and the ants/bees photos in ``../shared`` (skipped with a note when absent). For each threshold:

* recall: the share of altered copies (JPEG q50, 0.8x resize, a 2-pixel crop, brightness +-10%) of a stored
  picture that are recognised as the same picture;
* the holdout share: distinct images streamed through the admin's rule (hash split at ``--fraction``, plus
  pinning of any upload the test calls the same picture as a holdout image), and the share that ends in
  the holdout. Distinct look-alikes pinned by mistake push it above the configured fraction.

Not a timed test: it prints a table (and writes JSON with ``--json``) that the README reports.

    .venv/bin/python bench/near_duplicates.py --json bench/results/near_duplicates.json
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import random
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from graft.core.images import load_rgb
from graft.core.likeness import SAME_PICTURE, LikenessIndex, coarse_similarity, likeness, same_picture_score
from training.fashion_mnist import FASHION_MNIST_DIR, read_idx

log = logging.getLogger("bench.near_duplicates")
THRESHOLDS = (0.86, 0.88, SAME_PICTURE, 0.92)
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


def recall(images: list[Image.Image]) -> dict[str, dict[str, float]]:
    """Per alteration and threshold: the share of copies retrieved (coarse) and confirmed (fine)."""
    looks = [likeness(im) for im in images]
    out: dict[str, dict[str, float]] = {}
    for name, alter in ALTERATIONS.items():
        scores = []
        for look, img in zip(looks, images, strict=True):
            copy = likeness(alter(img))
            scores.append(same_picture_score(look, copy) if coarse_similarity(look, copy) >= 0.7 else -1.0)
        arr = np.array(scores)
        out[name] = {f"{t:.2f}": round(float((arr >= t).mean()), 4) for t in THRESHOLDS}
    return out


def holdout_share(images: list[Image.Image], keys: list[bytes], fraction: float) -> dict[str, dict[str, float]]:
    looks = [likeness(im) for im in images]
    out = {}
    for t in THRESHOLDS:
        index, by_hash, pinned, started = LikenessIndex(), 0, 0, time.perf_counter()
        for i, look in enumerate(looks):
            hashed = int(hashlib.sha256(keys[i]).hexdigest()[:8], 16) / 0x1_0000_0000 < fraction
            pin = not hashed and index.match(look, t) is not None
            if hashed or pin:
                index.add(str(i), look)
                by_hash, pinned = by_hash + hashed, pinned + pin
        ms = 1000 * (time.perf_counter() - started) / len(looks)
        out[f"{t:.2f}"] = {"share": round((by_hash + pinned) / len(looks), 4), "hash_split": by_hash,
                           "pinned": pinned, "n": len(looks), "ms_per_upload": round(ms, 2)}  # fmt: skip
    return out


def fashion(copies: int, stream: int) -> tuple[list[Image.Image], list[Image.Image], list[bytes]]:
    pixels = read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz")
    picked = random.Random(0).sample(range(len(pixels)), copies)
    held = [Image.fromarray(pixels[i], mode="L").convert("RGB") for i in picked]
    streamed = pixels[10_000 : 10_000 + stream]
    return held, [Image.fromarray(x, mode="L").convert("RGB") for x in streamed], [x.tobytes() for x in streamed]


def ants_bees(copies: int) -> tuple[list[Image.Image], list[Image.Image], list[bytes]]:
    files = sorted(p for p in SHARED.rglob("*.jpg"))
    images = [load_rgb(p) for p in files]
    images = [im.resize((im.width * 256 // max(im.size), im.height * 256 // max(im.size))) for im in images]
    return images[:: max(1, len(images) // copies)][:copies], images, [p.read_bytes() for p in files]


def main() -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False, formatter_class=fmt)
    p.add_argument("--copies", type=int, default=200, help="pictures altered in each way, per domain")
    p.add_argument("--stream", type=int, default=2000, help="distinct Fashion-MNIST uploads streamed")
    p.add_argument("--fraction", type=float, default=0.2, help="the configured holdout fraction")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not FASHION_MNIST_DIR.is_dir():
        raise SystemExit(f"{FASHION_MNIST_DIR} not found: apt-get install dataset-fashion-mnist (make setup does)")
    domains = {"fashion-mnist": fashion(args.copies, args.stream)}
    if SHARED.is_dir():
        domains["ants-bees"] = ants_bees(args.copies)
    else:
        log.warning("%s not found: the ants/bees domain is left out", SHARED)
    report: dict[str, object] = {"thresholds": THRESHOLDS, "default": SAME_PICTURE, "fraction": args.fraction}
    for name, (held, streamed, keys) in domains.items():
        report[name] = {"recall": recall(held), "holdout_share": holdout_share(streamed, keys, args.fraction)}
        log.info("%s: %s", name, json.dumps(report[name]))
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
