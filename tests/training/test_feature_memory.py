"""The feature-cache pass holds one batch at a time: stopping the forward early leaves nothing of a batch behind,
even when the model's own code keeps the exception that stopped it (a reference cycle through its frames)."""

from __future__ import annotations

import gc
import os
import sys
import weakref
from collections.abc import Iterator

import psutil
import pytest
import torch
from torch import nn

from training.features import compute_cut_features, feature_batches
from training.forward_cut import capture_tensors
from training.memory import can_release_memory

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


# ---------------------------------------------------------------------------------------------- the allocator
def _conv_model() -> nn.Module:
    """Activations of 2 to 9 MiB a batch: under glibc's raised mmap threshold, so they come from the heap."""
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 48, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Conv2d(48, 64, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 4)).eval()  # fmt: skip


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_the_feature_pass_stays_at_one_batch_of_resident_memory() -> None:
    """glibc keeps the heap pages a batch freed, and over a pass of batches of varied sizes the heap creeps up
    (measured: +32 MiB over these 40 batches, and 0.6 to 1 GB of heap on graft train's 4,000-image pass); the
    pass hands them back after each batch."""
    if not can_release_memory():
        pytest.skip("this C library has no malloc_trim")
    g = torch.Generator().manual_seed(0)
    proc = psutil.Process()
    between: list[int] = []

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for k in range(40):
            b = 24 + k % 9  # varied sizes, as skipped images and the last batch make them: holes of varied sizes
            yield torch.randn(b, 3, 48, 48, generator=g), torch.zeros(b, dtype=torch.long)
            between.append(proc.memory_info().rss)  # after batch k: only what the pass keeps is alive

    feats, targets = compute_cut_features(_conv_model(), batches(), [("input", "7")], torch.device("cpu"))
    assert feats[0].shape == (targets.shape[0], 64)
    growth = max(between) - between[0]
    assert growth < 12 * 2**20, f"resident memory grew {growth / 2**20:.0f} MiB between the first and later batches"


# ---------------------------------------------------------------------------------------------- the cache itself
_PEAK_SCRIPT = """
import sys, torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from training.features import compute_cut_features, feature_batches

class Images(Dataset):  # made on the fly: the dataset itself holds nothing
    def __len__(self): return 2000
    def __getitem__(self, i): return torch.full((3, 64, 64), float(i)), i % 4

model = nn.Sequential(nn.Identity(), nn.Flatten(), nn.Linear(3 * 64 * 64, 4)).eval()
loader = DataLoader(Images(), batch_size=50)
compute_cut_features(model, [next(iter(loader))], [("output", "0")], torch.device("cpu"))  # warm up
import psutil
before = psutil.Process().memory_info().rss
# The high-water mark, reset first: it keeps importing torch's peak, and across exec even the forking parent's.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
feats, targets = compute_cut_features(model, loader, [("output", "0")], torch.device("cpu"))
after = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
assert feats[0].shape == (2000, 3, 64, 64) and torch.equal(feats[0][1234, 0, 0, :3], torch.full((3,), 1234.0))
assert targets.tolist() == [i % 4 for i in range(2000)]
print(after - before, feats[0].numel() * 4)
"""


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="resets the peak through Linux's /proc")
def test_the_cache_holds_each_images_features_once() -> None:
    """The pass's peak is the cache plus a batch: no per-batch chunks joined into a second copy at the end
    (measured on the old code: 2.0 times the cache's size)."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, check=True)
    growth, cache = map(int, out.stdout.split())
    assert growth < 1.3 * cache, f"peak grew {growth / 2**20:.0f} MiB for a {cache / 2**20:.0f} MiB cache"


def test_feature_batches_are_gathered_as_iterated_not_up_front() -> None:
    feats = torch.randn(50_000, 1024)  # 195 MiB
    targets = torch.arange(50_000) % 7
    proc = psutil.Process()
    before = proc.memory_info().rss
    batches = feature_batches(feats, targets, 256, torch.Generator().manual_seed(0), shuffle=True)
    grew = proc.memory_info().rss - before
    assert grew < 20 * 2**20, f"building the batches allocated {grew / 2**20:.0f} MiB"
    assert len(batches) == 196
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == sorted(targets.tolist())  # every row once per epoch
    x, y = next(iter(batches))
    assert torch.equal(x, feats[batches.slices[0]]) and torch.equal(y, targets[batches.slices[0]])
