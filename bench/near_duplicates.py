"""Calibrate the near-duplicate test the admin uses to pin uploads to the holdout.

On Fashion-MNIST (Debian's ``dataset-fashion-mnist``; ``make setup`` installs it): how many pairs of *different*
images fall within ``NEAR_DUPLICATE_BITS`` of each other's 64-bit difference hash, and, for thresholds of the
thumbnail correlation, how many of those pairs would still be called "the same picture" against how many
altered copies (re-encoded, resized, brightened, cropped) are recognised. Not a timed test: it prints a
table (and writes JSON with ``--json``) that the README's "Near-duplicates of the holdout" reports.

    .venv/bin/python bench/near_duplicates.py --images 1000 --copies 200
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import logging
import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from admin.domain.samples import NEAR_DUPLICATE_BITS
from graft.core.images import difference_hash, hamming, thumb_similarity, thumbnail
from training.fashion_mnist import FASHION_MNIST_DIR, read_idx

log = logging.getLogger("bench.near_duplicates")
THRESHOLDS = (0.90, 0.92, 0.94, 0.95, 0.96)


def _jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    def apply(img: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    return apply


ALTERATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "jpeg50": _jpeg(50),
    "jpeg75": _jpeg(75),
    "jpeg90": _jpeg(90),
    "up2": lambda im: im.resize((im.width * 2, im.height * 2), Image.Resampling.BICUBIC),
    "down0.8": lambda im: im.resize((int(im.width * 0.8), int(im.height * 0.8)), Image.Resampling.BILINEAR),
    "bright": lambda im: Image.eval(im, lambda v: min(255, int(v * 1.1) + 5)),
    "crop1": lambda im: im.crop((1, 1, im.width - 1, im.height - 1)),
    "crop2": lambda im: im.crop((2, 2, im.width, im.height)),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    p.add_argument("--images", type=int, default=1000, help="Fashion-MNIST training images compared pairwise")
    p.add_argument("--copies", type=int, default=200, help="images altered in each way")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not FASHION_MNIST_DIR.is_dir():
        raise SystemExit(f"{FASHION_MNIST_DIR} not found: apt-get install dataset-fashion-mnist (make setup does)")
    pixels = read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz")[: args.images]
    images = [Image.fromarray(x, mode="L").convert("RGB") for x in pixels]
    hashes, thumbs = [difference_hash(im) for im in images], [thumbnail(im) for im in images]
    near = [thumb_similarity(thumbs[a], thumbs[b])
            for a, b in itertools.combinations(range(len(images)), 2)
            if hamming(hashes[a], hashes[b]) <= NEAR_DUPLICATE_BITS]  # fmt: skip
    log.info("%d pairs of different images within %d bits", len(near), NEAR_DUPLICATE_BITS)
    copies: dict[str, list[tuple[int, float]]] = {name: [] for name in ALTERATIONS}
    for i in random.Random(0).sample(range(len(images)), min(args.copies, len(images))):
        for name, alter in ALTERATIONS.items():
            copy = alter(images[i])
            bits = hamming(hashes[i], difference_hash(copy))
            copies[name].append((bits, thumb_similarity(thumbs[i], thumbnail(copy))))
    rows = []
    for t in THRESHOLDS:
        row: dict[str, float] = {"threshold": t, "different_pairs_called_same": float(np.mean([c >= t for c in near]))}
        for name, found in copies.items():
            within = [c for bits, c in found if bits <= NEAR_DUPLICATE_BITS]
            row[name] = float(np.mean([c >= t for c in within])) if within else float("nan")
        rows.append(row)
    within_bits = {name: float(np.mean([bits <= NEAR_DUPLICATE_BITS for bits, _ in f])) for name, f in copies.items()}
    print(f"{len(near)} pairs of different images (of {len(images)}) within {NEAR_DUPLICATE_BITS} bits")
    print("copies within the bits:", {k: round(v, 2) for k, v in within_bits.items()})
    print("threshold | different pairs called the same | copies (within the bits) recognised")
    for row in rows:
        print(row["threshold"], f"{row['different_pairs_called_same']:.3f}",
              {k: round(v, 2) for k, v in row.items() if k in ALTERATIONS})  # fmt: skip
    if args.json:
        result = {"images": len(images), "copies": args.copies, "bits": NEAR_DUPLICATE_BITS, "rows": rows,
                  "different_pairs_within_bits": len(near), "copies_within_bits": within_bits}  # fmt: skip
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
