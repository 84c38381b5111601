"""The feature-cache pass holds one batch at a time: stopping the forward early leaves nothing of a batch behind,
even when the model's own code keeps the exception that stopped it (a reference cycle through its frames)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import psutil
import pytest
import torch
from torch import nn

from training.forward_cut import capture_tensors

BATCHES = 120


class KeepsItsError(nn.Module):
    """A wrapper that remembers the error it saw, as some model code does: frame -> error -> traceback -> frame."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            out: torch.Tensor = self.body(x)
        except Exception as e:
            seen = e  # noqa: F841 - the cycle under test
            raise
        return out


def _model() -> nn.Module:
    body = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 8, 3, padding=1), nn.Flatten(),
                         nn.Linear(8 * 32 * 32, 4))  # fmt: skip
    return nn.Sequential(KeepsItsError(body)).eval()


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    """What a long feature pass sees between two cyclic collections: only reference counting frees memory."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def test_each_batch_is_freed_when_its_features_are_taken(no_cyclic_gc: None) -> None:
    model = _model()
    alive: list[weakref.ref[torch.Tensor]] = []  # each batch's input, which every frame of its forward holds
    rss = psutil.Process().memory_info().rss
    peak = rss
    with torch.no_grad():
        for _ in range(BATCHES):  # each batch's first activation is 32x32x32x16 floats: 2 MiB
            x = torch.randn(16, 3, 32, 32)
            alive.append(weakref.ref(x))
            feats = capture_tensors(model, x, [("output", "0.body.2")])
            assert feats[0].shape == (16, 8, 32, 32)
            del x, feats
            peak = max(peak, psutil.Process().memory_info().rss)
    assert sum(r() is not None for r in alive) == 0, "no batch outlives its pass"
    # Held batches would add 2 MiB each (240 MiB over the pass); one at a time, the peak stays near the start.
    assert peak - rss < 100 * 2**20, f"peak RSS grew {(peak - rss) / 2**20:.0f} MiB over {BATCHES} batches"
