"""The feature caches of a run: one per cut, several cuts filled in one pass over the images.

A cut is keyed by the frozen stages of its :class:`training.freeze.FreezePlan`. A plain run asks
for one cut; the auto recipe asks for every candidate depth at once, and the images then run
through the frozen network once, each cut's tensor taken on the way (training/features.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn
from torch.utils.data import DataLoader

from training.distributed import sharded_cut_features
from training.features import Split, compute_cut_features, describe, split_models
from training.forward_cut import capture_tensors
from training.freeze import FreezePlan
from training.runtime import Runtime

log = logging.getLogger(__name__)

# Past this, cached activations of an early cut would not fit comfortably in memory: run the network.
MAX_CACHE_BYTES = 4 * 2**30


@dataclass
class Cached:
    split: Split
    train: torch.Tensor
    train_targets: torch.Tensor
    val: torch.Tensor
    val_targets: torch.Tensor
    _pooled: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False)

    def pooled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Training and validation tensors together, with their targets (a refit trains on both)."""
        if self._pooled is None:
            self._pooled = torch.cat([self.train, self.val]), torch.cat([self.train_targets, self.val_targets])
        return self._pooled


class FeatureCaches:
    """Cuts of one model, and the cached tensors at each (None: that cut cannot be cached)."""

    def __init__(
        self,
        model: nn.Module,
        head_root: str,
        loaders: Callable[[], tuple[DataLoader, DataLoader]],
        device: torch.device,
        crop: int,
        channels_last: bool = False,
        rt: Runtime | None = None,
    ):
        self.model, self.head_root, self.loaders = model, head_root, loaders
        self.device, self.crop, self.channels_last = device, crop, channels_last
        self.rt = rt
        self._entries: dict[tuple[str, ...], Cached | None] = {}

    def get(self, plan: FreezePlan) -> Cached | None:
        if plan.frozen not in self._entries:
            self.fill([plan])
        return self._entries[plan.frozen]

    def fill(self, plans: Sequence[FreezePlan]) -> None:
        """Cache the cut of every plan not cached yet, in one pass over the train and val images."""
        todo = {p.frozen: p for p in plans if p.frozen not in self._entries}
        if not todo:
            return
        # A fixed random batch (not the global RNG: the run's random draws stay the same either way).
        probe = torch.randn(2, 3, self.crop, self.crop, generator=torch.Generator().manual_seed(0)).to(self.device)
        splits: dict[tuple[str, ...], Split] = {}
        found = split_models(self.model, list(todo.values()), self.head_root, probe)
        for key, split in zip(todo, found, strict=True):
            if split is None:
                log.info("feature cache: the model cannot be cut after %s; running the whole network", key[-1])
                self._entries[key] = None
            else:
                splits[key] = split
        if not splits:
            return
        loader_train, loader_val = self.loaders()
        n_images = len(loader_train.dataset) + len(loader_val.dataset)  # type: ignore[arg-type]
        keys = self._within_memory(splits, probe, n_images)
        if not keys:
            return
        captures = [splits[k].capture for k in keys]
        t0 = time.perf_counter()
        compute = compute_cut_features
        if self.rt is not None and self.rt.distributed:  # each rank runs its share of the images
            compute = partial(sharded_cut_features, self.rt)
        tr, ytr = compute(self.model, loader_train, captures, self.device, "train features", self.channels_last)
        va, yva = compute(self.model, loader_val, captures, self.device, "val features", self.channels_last)
        seconds = time.perf_counter() - t0
        for i, key in enumerate(keys):
            self._entries[key] = Cached(splits[key], tr[i], ytr, va[i], yva)
            log.info(
                "feature cache: the frozen stages ran once per image; cached the %s: %s + %s in %.1fs",
                splits[key].boundary, describe(tr[i]), describe(va[i]), seconds,
            )  # fmt: skip

    def _within_memory(
        self, splits: dict[tuple[str, ...], Split], probe: torch.Tensor, n_images: int
    ) -> list[tuple[str, ...]]:
        """The cuts whose activations fit in MAX_CACHE_BYTES together, shallowest (smallest) first."""
        keys = list(splits)
        with torch.no_grad():
            self.model.eval()
            outs = capture_tensors(self.model, probe[:1], [splits[k].capture for k in keys])
        sizes = {k: out.numel() * 4 * n_images for k, out in zip(keys, outs, strict=True)}
        kept: list[tuple[str, ...]] = []
        total = 0
        for key in sorted(keys, key=lambda k: sizes[k]):
            if total + sizes[key] > MAX_CACHE_BYTES:
                log.info("feature cache: %.1f GiB of activations at the %s is too much; running the whole network",
                         sizes[key] / 2**30, splits[key].boundary)  # fmt: skip
                self._entries[key] = None
                continue
            total += sizes[key]
            kept.append(key)
        return kept
