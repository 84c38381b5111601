"""The feature cache: run the frozen prefix once, train the rest on its outputs.

When every backbone stage is frozen (in eval mode) and no random augmentation runs through it,
the input of the head is a fixed function of the image. Computing it once per image and training
the head on those tensors gives the same result as running the whole network every epoch,
for a fraction of the compute.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

log = logging.getLogger(__name__)


def head_module(model: nn.Module, head_root: str) -> nn.Module:
    return model.get_submodule(head_root)


@torch.no_grad()
def compute_features(
    model: nn.Module,
    head_root: str,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    desc: str = "features",
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of the ``head_root`` module for every image, on the CPU, with their targets."""
    captured: list[torch.Tensor] = []

    def grab(_module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach().float().cpu())

    model.eval()
    handle = head_module(model, head_root).register_forward_pre_hook(grab)
    targets: list[torch.Tensor] = []
    try:
        for x, y in tqdm(batches, desc=desc, leave=False, disable=None):
            if x.numel() == 0:
                continue
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                model(x)
            targets.append(y)
    finally:
        handle.remove()
    if not captured:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(captured), torch.cat(targets)


def feature_batches(
    feats: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None,
    shuffle: bool,
    rank: int = 0,
    world: int = 1,
    sample_weights: torch.Tensor | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of cached features: shuffled (or class-balanced) per epoch, sharded by rank."""
    n = feats.shape[0]
    if sample_weights is not None:
        order = torch.multinomial(sample_weights, n, replacement=True, generator=generator)
    elif shuffle:
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    order = order[rank::world]
    return [(feats[idx], targets[idx]) for idx in order.split(batch_size)]
