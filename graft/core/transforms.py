"""Image -> tensor transforms, built from a model card's preprocessing.

Training's evaluation transform and the serving handler's transform are this one function,
so what the model saw during validation is exactly what it sees in production.
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from graft.core.preprocessing import Preprocessing


def interpolation_mode(name: str) -> InterpolationMode:
    try:
        return InterpolationMode(name.lower())
    except ValueError as e:
        choices = ", ".join(m.value for m in InterpolationMode)
        raise ValueError(f"unknown interpolation {name!r}; choose one of {choices}") from e


def eval_transform(pre: Preprocessing) -> T.Compose:
    """Resize the short side, centre-crop, scale to [0, 1], normalise. Accepts PIL images or uint8 CHW tensors."""
    return T.Compose(
        [
            T.ToImage(),
            T.Resize(pre.resize, interpolation=interpolation_mode(pre.interpolation), antialias=True),
            T.CenterCrop(pre.crop),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean=list(pre.mean), std=list(pre.std)),
        ]
    )


def train_transform(pre: Preprocessing, augment: bool) -> T.Compose:
    """Random resized crop and flip when ``augment``; otherwise the evaluation transform."""
    if not augment:
        return eval_transform(pre)
    return T.Compose(
        [
            T.ToImage(),
            T.RandomResizedCrop(pre.crop, interpolation=interpolation_mode(pre.interpolation), antialias=True),
            T.RandomHorizontalFlip(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean=list(pre.mean), std=list(pre.std)),
        ]
    )
