"""GPU check of the training engine: the same recipes on CUDA (bf16 autocast, channels_last) and on the CPU.

Trains MobileNetV2 on an ants/bees subset three ways on the GPU (feature cache; last two stages
with a head warm-up; all stages, no cache) and the cached recipe on the CPU, and prints wall time,
validation accuracy and peak GPU memory for each. Exits non-zero when a GPU run fails or the cached
GPU run's accuracy is far from the CPU's.

    python bench/gpu_train_check.py DATA_DIR WEIGHTS
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


RECIPES = {
    "cached head": {},
    "last 2 stages + warm-up": {"trainable_stages": 2, "head_warmup_epochs": 2, "lr_decay": 0.3},
    "all stages, no cache": {"trainable_stages": 19, "feature_cache": False, "lr": 1e-3, "augment": True},
}


def main() -> int:
    import torch

    from training import TrainConfig, fit

    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("data", type=Path)
    ap.add_argument("weights", type=Path)
    ap.add_argument("--epochs", type=int, default=6)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not torch.cuda.is_available():
        print("no CUDA: nothing to check")
        return 0
    print(f"training on {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print(f"{'recipe':28} {'device':6} {'wall s':>7} {'val acc':>8} {'peak GPU MiB':>13}")
    failures = 0
    acc: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in RECIPES.items():
            for device in ("cuda", "cpu") if name == "cached head" else ("cuda",):
                torch.cuda.reset_peak_memory_stats()
                cfg = TrainConfig(
                    data=args.data, output=Path(tmp) / f"{name}-{device}".replace(" ", "_"),
                    backbone="mobilenet_v2", weights=str(args.weights), epochs=args.epochs, device=device,
                    **extra,  # type: ignore[arg-type]
                )  # fmt: skip
                t0 = time.perf_counter()
                try:
                    res = fit(cfg)
                except Exception as e:  # report every recipe, then fail
                    print(f"{name:28} {device:6} FAILED: {type(e).__name__}: {e}")
                    failures += 1
                    continue
                wall = time.perf_counter() - t0
                peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0.0
                acc[(name, device)] = res.val_accuracy
                print(f"{name:28} {device:6} {wall:7.1f} {res.val_accuracy:8.4f} {peak:13.0f}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {rss:.0f} MiB")
    gap = abs(acc.get(("cached head", "cuda"), 0) - acc.get(("cached head", "cpu"), 1))
    print(f"cached head, CUDA vs CPU validation accuracy gap: {gap:.4f}")
    return 1 if failures or gap > 0.05 else 0


if __name__ == "__main__":
    sys.exit(main())
