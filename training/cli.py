"""``graft train``, ``graft check``, ``graft export`` and ``graft backbones``: argument parsing only.

``graft train``'s flags are generated from :class:`training.config.TrainConfig`'s fields (name, type,
choices, help), so every setting has exactly one flag and a field without a flag cannot exist.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Short aliases kept from earlier versions of the command line.
_ALIASES = {"output": ["-o"]}


def _flag_type(annotation: Any) -> tuple[Any, list[str] | None]:
    """(argparse type, choices) for a field annotation: ``X | None`` -> X, ``Literal[...]`` -> choices."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _flag_type(inner[0]) if len(inner) == 1 else (str, None)
    if typing.get_origin(annotation) is typing.Literal:
        return type(args[0]), [str(a) for a in args]
    return annotation, None


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; defaults stay None so a flag given overrides ``--config`` only then."""
    from training.config import TrainConfig

    for name, field in TrainConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind, choices = _flag_type(field.annotation)
        default = "" if field.is_required() else f" (default {field.get_default()})"
        help_ = (field.description or "") + default
        names = [flag, *_ALIASES.get(name, [])]
        if kind is bool:
            parser.add_argument(*names, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            parser.add_argument(*names, dest=name, type=kind, choices=choices, default=None, help=help_)


def config_from_args(args: argparse.Namespace) -> Any:
    """``--config FILE`` (if any), then every flag given, validated as one TrainConfig."""
    from training.config import TrainConfig, build_config, read_config_file

    values: dict[str, Any] = read_config_file(args.config) if args.config is not None else {}
    values.update({k: getattr(args, k) for k in TrainConfig.model_fields if getattr(args, k, None) is not None})
    return build_config(values)


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a zoo backbone on an image folder or a dataset manifest",
        description="Give --data or --manifest, and --output; or a --config JSON file of the same settings "
        "(flags override it).",
        allow_abbrev=False,
    )
    p.add_argument("--config", type=Path, help="JSON file of training settings (the admin's jobs use this)")
    add_config_flags(p)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from training import fit

    result = fit(config_from_args(args))
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 answers for the run
        return 0
    print(json.dumps({"run_dir": str(result.run_dir), "val_accuracy": result.val_accuracy}))
    return 0


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="export a run folder to ONNX and a TorchServe .mar", allow_abbrev=False,
                       description="Export RUN_DIR (graft train's output) to model.onnx and a TorchServe archive "
                                   "MODEL_STORE/NAME-VERSION.mar that graft serve --model-store serves.")
    p.add_argument("run_dir", type=Path, help="a run folder written by graft train")
    p.add_argument("--model-store", type=Path, default=Path("model_store"),
                   help="folder the .mar archive is written to (default: model_store)")
    p.add_argument("--name", help="TorchServe model name (default: the run folder's name, as graft serve uses)")
    p.add_argument("--version", default="1.0", help="model version TorchServe serves it as (default 1.0)")
    p.add_argument("--backend", choices=["onnx", "torch"], default="onnx", help="what the handler runs")
    p.add_argument("--batch-size", type=int, default=8, help="TorchServe batch size")
    p.add_argument("--max-batch-delay", type=int, default=20, help="ms TorchServe waits to fill a batch")
    p.add_argument("--workers", type=int, default=1, help="TorchServe worker processes for this model (default 1)")
    p.add_argument("--check-images", type=Path, help="folder of images to verify the ONNX export on")
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX (only with --backend torch)")
    p.add_argument(
        "--requirements-file", type=Path, help="pip requirements carried in the .mar (e.g. for KServe's runtime)"
    )
    q = p.add_argument_group("INT8 (ONNX Runtime static quantization; the archive then serves model.int8.onnx)")
    q.add_argument("--quantize", choices=["int8"], help="also write model.int8.onnx and serve it (backend onnx)")
    q.add_argument("--max-accuracy-drop", type=float, default=1.0,
                   help="validation accuracy points INT8 may lose against FP32 before the export fails (default 1.0)")
    q.add_argument("--calibration-images", type=int, default=300, help="training images to calibrate on (default 300)")
    q.add_argument("--calibration-method", choices=["minmax", "percentile", "entropy"], default="minmax",
                   help="how activation ranges are chosen from the calibration images (default minmax)")
    q.add_argument("--int8-fp32-nodes", default="auto", metavar="auto|none|NODE,NODE",
                   help="nodes kept in FP32: auto = a per-node sensitivity pass decides (default), none = all INT8")
    p.set_defaults(func=_run_export)


def _quantize_options(args: argparse.Namespace) -> Any:
    from training.quantize import QuantizeOptions

    if args.quantize is None:
        return None
    nodes = {"auto": None, "none": ()}.get(args.int8_fp32_nodes)
    if args.int8_fp32_nodes not in ("auto", "none"):
        nodes = tuple(n.strip() for n in args.int8_fp32_nodes.split(",") if n.strip())
    return QuantizeOptions(
        max_accuracy_drop=args.max_accuracy_drop, calibration_images=args.calibration_images,
        calibration_method=args.calibration_method, fp32_nodes=nodes,
    )  # fmt: skip


def _run_export(args: argparse.Namespace) -> int:
    from graft.core.artifact import name_from_folder
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
        args.name or name_from_folder(args.run_dir),
        args.version,
        images,
        config,
        onnx=not args.no_onnx,
        requirements_file=args.requirements_file,
        quantize=_quantize_options(args),
    )
    out = {"mar": str(mar), "onnx": None if args.no_onnx else str(args.run_dir / "model.onnx")}
    if args.quantize:
        out["int8"] = str(args.run_dir / "model.int8.onnx")
    print(json.dumps(out))
    return 0


def _add_backbones(sub: Any) -> None:
    p = sub.add_parser(
        "backbones", help="list the zoo's backbones, and which have ImageNet weights on this machine",
        description="Every backbone graft train --backbone accepts. 'offline' marks those whose ImageNet weights "
        "are already on this machine (a Python package, or torchvision's download cache), so --weights imagenet "
        "works without a network; the others download them once, or take --weights FILE or --weights none.",
        allow_abbrev=False,
    )  # fmt: skip
    p.add_argument("--offline", action="store_true", help="only the backbones whose weights are here")
    p.add_argument("--json", action="store_true", help="[{name, weights}] as JSON")
    p.set_defaults(func=_run_backbones)


def _run_backbones(args: argparse.Namespace) -> int:
    from training.backbones import weights_here

    rows = [(name, weights_here(name)) for name in _backbone_names()]
    if args.offline:
        rows = [r for r in rows if r[1]]
    if args.json:
        print(json.dumps([{"name": n, "weights": w} for n, w in rows], indent=2))
        return 0
    width = max((len(n) for n, _ in rows), default=0)
    print("\n".join(f"{n.ljust(width)}  offline ({w})" if w else n for n, w in rows))
    here = sum(1 for _, w in rows if w)
    print(f"{len(rows)} backbone(s); {here} with ImageNet weights on this machine", file=sys.stderr)
    return 0


def _backbone_names() -> list[str]:
    from graft.core.zoo import list_backbones

    return list_backbones()


def _add_check(sub: Any) -> None:
    p = sub.add_parser(
        "check",
        help="report what is wrong with a data set before training on it",
        description="Decode every image of DATA (a folder or a dataset manifest) once and report unreadable "
        "files, transparency, duplicates within and across splits, classes too small or imbalanced, labels that "
        "look like typos of one another, odd sizes and modes. Exit status 1 when graft train would refuse the "
        "data (or, with --strict, on any warning).",
        allow_abbrev=False,
    )
    p.add_argument("data", type=Path, help="DIR/<label>/*, DIR/train/<label> + DIR/val/<label>, or a manifest")
    p.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    p.add_argument("--strict", action="store_true", help="exit status 1 on warnings too")
    p.add_argument("--background", default="white", help="colour transparency is composited on (as for train)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share when DATA has no val split")
    p.add_argument("--seed", type=int, default=0, help="the split's seed when DATA has no val split")
    p.set_defaults(func=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    from graft.core.errors import ConfigInvalidError
    from graft.core.preprocessing import parse_color
    from training.check import check_data
    from training.check_text import render_text

    try:
        background = parse_color(args.background)
    except ValueError as e:
        raise ConfigInvalidError(f"--background: {e}") from e
    report = check_data(args.data, background, args.val_fraction, args.seed)
    print(json.dumps(report.as_dict(), indent=2) if args.json else render_text(report))
    failed = report.count("error") > 0 or (args.strict and report.count("warning") > 0)
    return 1 if failed else 0


def register(sub: Any) -> None:
    _add_train(sub)
    _add_check(sub)
    _add_export(sub)
    _add_backbones(sub)
