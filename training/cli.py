"""``graft train``, ``graft export`` and ``graft backbones``: argument parsing only."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _add_train(sub: Any) -> None:
    from training.config import TrainConfig

    # Defaults live in TrainConfig alone; flags left out fall back to them (shown in --help).
    p = sub.add_parser(
        "train",
        help="fine-tune a zoo backbone on an image folder or a dataset manifest",
        epilog="defaults: "
        + ", ".join(f"{k}={f.default}" for k, f in TrainConfig.model_fields.items() if f.default is not None),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="DIR/<label>/*.jpg, or DIR/train/<label> + DIR/val/<label>")
    src.add_argument("--manifest", type=Path, help="a dataset manifest (written by the admin service)")
    p.add_argument("--output", "-o", type=Path, required=True, help="run folder to write")
    p.add_argument("--backbone", help="zoo name (graft backbones lists them)")
    p.add_argument("--weights", help="imagenet | none | path to a state_dict")
    p.add_argument("--init-from", type=Path, help="warm start from a run folder")
    frz = p.add_mutually_exclusive_group()
    frz.add_argument("--freeze-until", help="freeze the stem through this stage (inclusive), e.g. layer3")
    frz.add_argument("--trainable-stages", type=int, help="train the last N backbone stages (0 = head only)")
    p.add_argument("--frozen-bn", choices=["eval", "train"], help="BatchNorm mode in frozen stages (default eval)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--head-warmup-epochs", type=int, help="head-only epochs before unfreezing")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="head learning rate")
    p.add_argument("--lr-decay", type=float, help="per-stage LR ratio from head towards stem")
    p.add_argument("--optimizer", choices=["adamw", "sgd"])
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=["cosine", "onecycle", "step", "constant"])
    p.add_argument("--step-epochs", type=int, help="step schedule: epochs between LR drops")
    p.add_argument("--step-gamma", type=float, help="step schedule: factor per drop")
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--patience", type=int, help="early stopping patience (0 = off)")
    p.add_argument("--augment", action="store_true", help="random resized crops and flips (disables the cache)")
    p.add_argument("--no-feature-cache", action="store_true", help="always run the whole network")
    p.add_argument("--balance", choices=["loss", "sampler", "none"])
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--max-per-class", type=int, help="use at most N images per class and split")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--num-workers", type=int, help="data loader processes")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from training import fit
    from training.config import TrainConfig

    fields = set(TrainConfig.model_fields)
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    values["feature_cache"] = "off" if args.no_feature_cache else "auto"
    result = fit(TrainConfig(**values))
    print(json.dumps({"run_dir": str(result.run_dir), "val_accuracy": result.val_accuracy}))
    return 0


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="export a run folder to ONNX and a TorchServe .mar")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--model-store", type=Path, default=Path("model_store"))
    p.add_argument("--name", required=True, help="TorchServe model name")
    p.add_argument("--version", default="1.0")
    p.add_argument("--backend", choices=["onnx", "torch"], default="onnx", help="what the handler runs")
    p.add_argument("--batch-size", type=int, default=8, help="TorchServe batch size")
    p.add_argument("--max-batch-delay", type=int, default=20, help="ms TorchServe waits to fill a batch")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--check-images", type=Path, help="folder of images to verify the ONNX export on")
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX (only with --backend torch)")
    p.add_argument(
        "--requirements-file", type=Path, help="pip requirements carried in the .mar (e.g. for KServe's runtime)"
    )
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from training.export import export_run

    images = None
    if args.check_images is not None:
        images = sorted(p for p in args.check_images.rglob("*") if p.is_file())
    config = {
        "backend": args.backend,
        "batch_size": args.batch_size,
        "max_batch_delay_ms": args.max_batch_delay,
        "workers": args.workers,
    }
    mar = export_run(
        args.run_dir,
        args.model_store,
        args.name,
        args.version,
        images,
        config,
        onnx=not args.no_onnx,
        requirements_file=args.requirements_file,
    )
    print(json.dumps({"mar": str(mar), "onnx": None if args.no_onnx else str(args.run_dir / "model.onnx")}))
    return 0


def _add_backbones(sub: Any) -> None:
    p = sub.add_parser("backbones", help="list the zoo's backbones")
    p.set_defaults(func=_run_backbones)


def _run_backbones(args: argparse.Namespace) -> int:
    from graft.zoo import list_backbones

    print("\n".join(list_backbones()))
    return 0


def register(sub: Any) -> None:
    _add_train(sub)
    _add_export(sub)
    _add_backbones(sub)
