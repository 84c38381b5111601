"""The frozen stages' output per image, kept across evaluations, so that judging a model costs its trained
stages only, plus the frozen ones on images never seen before (issue 25).

A model trained with its early stages frozen computes, for a given image, exactly what every other model
with the same frozen weights computes up to the cut. Champion and candidate usually share them (both start
from the same pretrained backbone), and so do the candidates of later jobs: each job then runs the frozen
stages only on the holdout images added since, and the trained stages (for the default head recipe, one
linear layer) on the whole holdout.

The store is keyed by a digest of what decides the cut's output: the backbone, the preprocessing, the frozen
stages' names and their weights and buffers. Each image is keyed by its path, size and modification time
(samples are content-addressed; a base file replaced in place is read again). Features are float32 ``.npy``
chunks that are never changed, plus an index written atomically: a lost or corrupt index costs only time.
Past ``MAX_FEATURE_BYTES`` a picture (an early cut of a wide network), the model runs whole instead.

The store does not outlive its pictures: after each evaluation, rows of images that are gone or changed (an
erased sample, a base file replaced in place) are dropped and the chunks that held them are written again
without them, and only the ``KEEP_STORES`` most recently used stores are kept (a change of backbone leaves the
old one behind).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from graft.core.artifact import ModelCard
from graft.core.transforms import eval_transform
from graft.core.util import file_key, write_atomic
from graft.core.zoo import find_head, model_stages
from training.features import Split, split_model
from training.freeze import FreezePlan

log = logging.getLogger(__name__)

MAX_FEATURE_BYTES = 64 * 1024
INDEX = "index.json"
# The champion's and the candidate's frozen stages may differ (a new backbone): keep both, drop older ones.
KEEP_STORES = 2


def plan_of(model: nn.Module, card: ModelCard) -> FreezePlan | None:
    """The frozen stages the run recorded (``recipe.frozen_stages``), when they are a prefix of the model's."""
    frozen = card.recipe.get("frozen_stages")
    if not isinstance(frozen, list) or not frozen:
        return None
    stages = model_stages(model)
    body = [s.name for s in stages if s.name != "head"]
    if body[: len(frozen)] != frozen:
        return None
    return FreezePlan(stages=tuple(stages), frozen=tuple(frozen))


def prefix_digest(model: nn.Module, plan: FreezePlan, card: ModelCard) -> str:
    """What decides the cut's output: the backbone, preprocessing, frozen stages and their tensors."""
    h = hashlib.sha256(json.dumps({"backbone": card.backbone, "preprocessing": card.preprocessing.model_dump(),
                                   "frozen": list(plan.frozen)}, sort_keys=True).encode())  # fmt: skip
    for stage in plan.stages:
        if stage.name not in plan.frozen:
            continue
        for module in stage.modules:
            for name, tensor in sorted(model.get_submodule(module).state_dict().items()):
                h.update(f"{module}.{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class FeatureStore:
    """Features of one cut: image key -> (chunk file, row)."""

    def __init__(self, folder: Path):
        self.folder = folder
        try:
            self.index: dict[str, list[Any]] = dict(json.loads((folder / INDEX).read_text()))
        except (OSError, ValueError, TypeError):
            self.index = {}
        self._chunks: dict[str, np.ndarray] = {}
        self._present: dict[str, bool] = {}  # chunk file -> on disk (checked once per chunk, not per image)

    def __contains__(self, key: str) -> bool:
        if key not in self.index:
            return False
        chunk = self.index[key][0]
        if chunk not in self._present:
            self._present[chunk] = (self.folder / chunk).is_file()
        return self._present[chunk]

    def get(self, key: str) -> np.ndarray:
        chunk, row = self.index[key]
        if chunk not in self._chunks:
            self._chunks[chunk] = np.load(self.folder / chunk, mmap_mode="r", allow_pickle=False)
        return np.asarray(self._chunks[chunk][row])

    def add(self, keys: Sequence[str], features: np.ndarray) -> None:
        """One new chunk, then the index: what is on disk now (another evaluation may have added its own), what this
        store already knew, and the new keys. Chunks never change, so merging entries is safe."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            chunk = self._write_chunk(features)
            index = {**FeatureStore(self.folder).index, **self.index}
            index.update({k: [chunk, i] for i, k in enumerate(keys)})
            write_atomic(self.folder / INDEX, json.dumps(index).encode(), fsync=False)
            self.index = index
        except OSError as e:
            log.warning("frozen features not kept in %s: %s", self.folder, e)

    def _write_chunk(self, features: np.ndarray) -> str:
        """A new chunk file, complete before it has its name; returns the name."""
        chunk = f"chunk-{uuid.uuid4().hex}.npy"
        tmp = self.folder / f".{chunk}.tmp"
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(features, np.float32), allow_pickle=False)
        tmp.rename(self.folder / chunk)
        return chunk

    def prune(self) -> int:
        """Drop the rows of images that are gone or changed since they were kept; a chunk that held one is written
        again with its live rows only, so an erased picture's features leave the disk. Returns the rows dropped."""
        dead = {k for k in self.index if file_key(Path(k.rsplit("|", 2)[0])) != k}
        if not dead:
            return 0
        try:
            index = {k: v for k, v in self.index.items() if k not in dead}
            stale = sorted({self.index[k][0] for k in dead})
            for chunk in stale:
                live = [k for k, (c, _) in index.items() if c == chunk]
                if live and (self.folder / chunk).is_file():
                    rows = np.load(self.folder / chunk, mmap_mode="r", allow_pickle=False)
                    fresh = self._write_chunk(rows[[index[k][1] for k in live]])
                    index.update({k: [fresh, i] for i, k in enumerate(live)})
                else:
                    for k in live:
                        del index[k]
            write_atomic(self.folder / INDEX, json.dumps(index).encode(), fsync=False)
            self.index, self._chunks, self._present = index, {}, {}
            for chunk in stale:  # after the index stops naming them
                (self.folder / chunk).unlink(missing_ok=True)
        except OSError as e:
            log.warning("frozen features in %s not pruned: %s", self.folder, e)
            return 0
        log.info("frozen features: %d row(s) of images gone or changed dropped from %s", len(dead), self.folder)
        return len(dead)


def retire_old_stores(root: Path, used: Path, keep: int = KEEP_STORES) -> list[Path]:
    """Remove all but the ``keep`` most recently used stores under ``root`` (``used`` is one of them, just used).
    Returns what was removed."""
    try:
        os.utime(used)
        stores = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime_ns, reverse=True)
    except OSError:
        return []
    gone = [d for d in stores[keep:] if d != used]
    for d in gone:
        shutil.rmtree(d, ignore_errors=True)
        log.info("frozen features of other frozen stages removed: %s", d)
    return gone


@torch.no_grad()
def predict_with_cache(model: nn.Module, card: ModelCard, paths: Sequence[Path], device: str, batch_size: int,
                       root: Path) -> list[list[float]] | None:  # fmt: skip
    """Class probabilities per image ([] when unreadable), the frozen stages read from ``root`` where known;
    None when this model cannot be cut (nothing frozen, or a cut too large to keep): run it whole."""
    plan = plan_of(model, card)
    if plan is None:
        return None
    split = split_model(model, plan, find_head(model)[0].split(".")[0])
    if split is None:
        return None
    store = FeatureStore(root / prefix_digest(model, plan, card)[:32])
    keys = [file_key(Path(p)) for p in paths]
    known = {i: k for i, k in enumerate(keys) if k is not None and k in store}
    todo = [i for i in range(len(paths)) if i not in known]
    fresh = _prefix_features(split, card, [Path(paths[i]) for i in todo], device, batch_size)
    if fresh is None:
        return None
    computed = {todo[j]: feats for j, feats in fresh.items()}
    kept = [i for i in computed if keys[i] is not None]
    if kept:
        store.add([str(keys[i]) for i in kept], np.stack([computed[i] for i in kept]))
    log.info("frozen stages (%s): %d of %d image(s) from the cache in %s", plan.describe(),
             len(known), len(paths), store.folder)  # fmt: skip
    out: list[list[float]] = [[] for _ in paths]
    ready = sorted([*computed, *known])
    for lo in range(0, len(ready), batch_size):
        rows = ready[lo : lo + batch_size]
        feats = np.stack([computed[i] if i in computed else store.get(known[i]) for i in rows])
        probs = split.suffix(torch.from_numpy(feats).to(device)).float().softmax(1).cpu()
        for i, row in zip(rows, probs.tolist(), strict=True):
            out[i] = row
    store.prune()  # after reading: what this evaluation used stays, what is gone leaves with its features
    retire_old_stores(root, store.folder)
    return out


def _prefix_features(split: Split, card: ModelCard, paths: list[Path], device: str,
                     batch_size: int) -> dict[int, np.ndarray] | None:  # fmt: skip
    """The cut's output per readable image (position in ``paths``); None when it is too large to keep."""
    from training.data import ImageDataset, collate

    pre = card.preprocessing
    ds = ImageDataset([(p, i) for i, p in enumerate(paths)], eval_transform(pre), pre.background)
    out: dict[int, np.ndarray] = {}
    for x, idx in DataLoader(ds, batch_size=batch_size, collate_fn=collate):
        if x.numel() == 0:
            continue
        feats = split.prefix(x.to(device)).float().cpu()
        if feats[0].numel() * 4 > MAX_FEATURE_BYTES:
            log.info("frozen stages' output is %d bytes an image: not cached, the model runs whole",
                     feats[0].numel() * 4)  # fmt: skip
            return None
        for i, row in zip(idx.tolist(), feats.numpy(), strict=True):
            out[i] = row
    return out
