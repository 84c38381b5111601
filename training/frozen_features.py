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

The store (:mod:`training.feature_store`) does not outlive its pictures: after each evaluation (and when the
admin deletes sample files), rows of images that are gone or changed are dropped and the chunks that held them
are written again without them, and only the ``KEEP_STORES`` most recently used stores are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from graft.core.artifact import ModelCard
from graft.core.transforms import eval_transform
from graft.core.util import file_key
from graft.core.zoo import find_head, model_stages
from training.feature_store import FeatureStore, retire_old_stores
from training.features import Split, split_model
from training.freeze import FreezePlan

log = logging.getLogger(__name__)

MAX_FEATURE_BYTES = 64 * 1024


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
