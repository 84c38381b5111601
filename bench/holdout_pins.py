"""How the holdout filled, read from an admin's state folder: the share of uploads pinned as near-duplicates per
window of uploads, and whether sampled pins are copies of their holdout twin or distinct pictures.

The intake pins an upload to the holdout when the same-picture test (graft/core/likeness.py) calls it a copy of a
holdout picture. A true copy (re-encoded, resized, lightly cropped, brightened) differs from its twin by little
more than compression noise; a distinct look-alike by much more. This reads the ``samples`` table read-only and,
for a sample of pinned uploads, compares each with its twin pixel by pixel (both as grayscale, at the same size):
mean absolute difference (0-255) and correlation. Not a timed test.

    .venv/bin/python bench/holdout_pins.py STATE_DIR --window 10000 --sample 300 --json out.json
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def _gray(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), np.float32)


def windows(rows: list[tuple[int, str, str]], size: int) -> list[dict[str, Any]]:
    """Per ``size`` uploads in arrival order: the holdout share and the pinned share."""
    out = []
    for lo in range(0, len(rows), size):
        chunk = rows[lo : lo + size]
        held = sum(s == "holdout" for _, s, _ in chunk)
        pinned = sum(s == "holdout" and r.startswith("near-duplicate") for _, s, r in chunk)
        kept = sum(s == "train" and r.startswith("near-duplicate") for _, s, r in chunk)
        out.append({"uploads": f"{lo + 1}-{lo + len(chunk)}", "holdout_share": round(held / len(chunk), 3),
                    "pinned_share": round(pinned / len(chunk), 3), "kept_in_training": kept})  # fmt: skip
    return out


def pairs(db: sqlite3.Connection, root: Path, sample: int, seed: int = 0) -> dict[str, Any]:
    """Sampled pinned uploads against their twins: pixel differences where both have the same size."""
    paths = {sha: (root / path, label) for sha, path, label in db.execute("SELECT sha256, path, label FROM samples")}
    pinned = db.execute("SELECT path, label, split_reason FROM samples WHERE split = 'holdout' "
                        "AND split_reason LIKE 'near-duplicate of %'")
    pinned_rows = pinned.fetchall()
    picked = random.Random(seed).sample(pinned_rows, min(sample, len(pinned_rows)))
    mad, corr, same_label, other_size = [], [], 0, 0
    for path, label, reason in picked:
        twin = paths.get(reason.rsplit(" ", 1)[-1])
        if twin is None:  # a base-data twin ("base:NAME"): not in the samples table
            continue
        a, b = _gray(root / path), _gray(twin[0])
        same_label += label == twin[1]
        if a.shape != b.shape:
            other_size += 1
            continue
        mad.append(float(np.abs(a - b).mean()))
        av, bv = a.ravel() - a.mean(), b.ravel() - b.mean()
        denom = float(np.linalg.norm(av) * np.linalg.norm(bv))
        corr.append(float(av @ bv / denom) if denom else 1.0)
    q = [0.0, 0.1, 0.5, 0.9, 1.0]

    def quantiles(v: list[float], digits: int) -> dict[str, float]:
        return dict(zip(map(str, q), np.quantile(v, q).round(digits).tolist(), strict=True)) if v else {}

    return {"pinned": len(pinned_rows), "sampled": len(picked), "same_label": same_label, "other_size": other_size,
            "compared": len(mad), "identical": sum(m == 0 for m in mad),
            "mean_abs_diff_quantiles": quantiles(mad, 1), "correlation_quantiles": quantiles(corr, 3)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("state", type=Path, help="the admin's state folder (GRAFT_STATE_DIR)")
    ap.add_argument("--window", type=int, default=10_000, help="uploads per row of the share table")
    ap.add_argument("--sample", type=int, default=300, help="pinned uploads compared with their twin")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    db = sqlite3.connect(f"file:{args.state / 'admin.sqlite3'}?mode=ro", uri=True)
    rows = db.execute("SELECT seq, split, split_reason FROM samples ORDER BY seq").fetchall()
    report = {"samples": len(rows), "windows": windows(rows, args.window), "pins": pairs(db, args.state, args.sample)}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
