"""Partial fine-tuning of EfficientNet-Lite0 with and without the feature cache, in one run.

The last 4 stages (``_blocks.14``, ``_blocks.15``, ``_conv_head``, ``_bn1``) and the head train on the
full ants/bees set (``../shared/data/hymenoptera``); with the cache, the frozen stages run once per
image and the rest train on the cached ``_blocks.13`` outputs (cut through the model's forward: torch.fx
cannot cut Lite0). Each run in its own process; a fixed number of epochs (no early stopping), so
both do the same work.

    .venv/bin/python -m bench.lite0_cache --json bench/results/lite0_cache.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from bench._runs import REPO, machine, spawn, train_here

DATA = REPO.parent / "shared" / "data" / "hymenoptera"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(train_here(json.loads(args.one))))
        return 0
    if not DATA.is_dir():
        raise SystemExit(f"needs {DATA} (../shared beside the checkout)")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    rows = []
    with tempfile.TemporaryDirectory(prefix="graft-lite0-") as tmp:
        for cache in (True, False):
            settings = {"data": str(DATA), "output": f"{tmp}/{cache}", "trainable_stages": 4, "epochs": args.epochs,
                        "patience": 0, "feature_cache": cache, "seed": 0}  # fmt: skip
            row = {"feature_cache": cache, **spawn("bench.lite0_cache", ["--one", json.dumps(settings)])}
            logging.warning("cache %s: %.1fs", cache, row["wall_s"])
            rows.append(row)
    speedup = rows[1]["wall_s"] / rows[0]["wall_s"]
    cpu_speedup = rows[1]["cpu_s"] / rows[0]["cpu_s"]
    print(f"machine: {machine()}\n")
    print("| feature cache | wall s | cpu s | val acc | epochs | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['feature_cache']} | {r['wall_s']} | {r['cpu_s']} | {r['val_accuracy']} | {r['epochs_run']} | "
              f"{r['peak_rss_mib']} |")  # fmt: skip
    print(f"\nwith the cache: {speedup:.1f}x faster (wall), {cpu_speedup:.1f}x less CPU time")
    if args.json:
        body = {"machine": machine(), "runs": rows, "speedup_wall": round(speedup, 2),
                "speedup_cpu": round(cpu_speedup, 2)}  # fmt: skip
        args.json.write_text(json.dumps(body, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
