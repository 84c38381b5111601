"""Training benchmark: graft's default recipe vs the tutorial-style baseline, in one run.

Full ants/bees set (../shared/data/hymenoptera), ImageNet MobileNetV2 (../shared/weights).
Each recipe runs in its own process so wall time and peak RSS are its own. Prints a Markdown
table and writes the numbers as JSON.

    .venv/bin/python bench/train_hymenoptera.py [--skip-baseline] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
DATA = SHARED / "data" / "hymenoptera"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet.pth"

RECIPES: dict[str, dict[str, Any]] = {
    # graft's defaults (head on a frozen backbone, feature cache), on the MobileNetV2 weights
    "graft default (mobilenet_v2)": {"backbone": "mobilenet_v2", "weights": str(WEIGHTS)},
    # the same defaults on the zoo's offline ImageNet backbone
    "graft default (efficientnet_lite0)": {"backbone": "efficientnet_lite0", "weights": "imagenet"},
    # the PyTorch transfer-learning tutorial: everything trains, one LR, SGD, batch 4, 25 epochs,
    # BatchNorm in train mode, random crops and flips, no cache, no early stopping
    "tutorial baseline (mobilenet_v2)": {
        "backbone": "mobilenet_v2",
        "weights": str(WEIGHTS),
        "trainable_stages": 19,
        "frozen_bn": "train",
        "optimizer": "sgd",
        "lr": 1e-3,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "schedule": "step",  # StepLR(7, 0.1)
        "step_epochs": 7,
        "step_gamma": 0.1,
        "warmup_epochs": 0,
        "batch_size": 4,
        "epochs": 25,
        "augment": True,
        "feature_cache": False,
        "patience": 0,
        "balance": "none",
    },
}


def run_one(name: str, out: Path) -> dict[str, Any]:
    """Train one recipe in this process; report wall time, accuracy and this process's peak RSS."""
    from training import TrainConfig, fit

    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    result = fit(TrainConfig(data=DATA, output=out, **RECIPES[name]))
    wall = time.perf_counter() - t0
    history = json.loads((out / "metrics.json").read_text())["history"]
    return {
        "recipe": name,
        "wall_s": round(wall, 1),
        "best_val_accuracy": round(max(h["val_accuracy"] for h in history), 4),
        "final_val_accuracy": round(result.val_accuracy, 4),
        "epochs_run": len(history),
        "feature_cache": result.used_feature_cache,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _spawn(name: str, tmp: Path) -> dict[str, Any]:
    out = tmp / name.replace(" ", "_").replace("(", "").replace(")", "")
    proc = subprocess.run(
        [sys.executable, __file__, "--one", name, "--out", str(out)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--skip-baseline", action="store_true", help="only graft's recipes (seconds, not minutes)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.out)))
        return 0
    if not DATA.is_dir() or not WEIGHTS.is_file():
        raise SystemExit(f"needs {DATA} and {WEIGHTS} (../shared beside the checkout)")
    names = [n for n in RECIPES if not (args.skip_baseline and n.startswith("tutorial"))]
    with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmp:
        rows = [_spawn(n, Path(tmp)) for n in names]
    base = next((r for r in rows if r["recipe"].startswith("tutorial")), None)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, CPU only\n")
    print("| recipe | wall s | best val acc | epochs | feature cache | peak RSS MiB | time vs baseline |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['wall_s'] / base['wall_s']:.3f}" if base else "-"
        print(
            f"| {r['recipe']} | {r['wall_s']} | {r['best_val_accuracy']} | {r['epochs_run']} | "
            f"{r['feature_cache']} | {r['peak_rss_mib']} | {ratio} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
