"""The images a run trained and validated on, rebuilt from its model card.

``model.json`` records where the data came from (``lineage.dataset_path``, a folder or a manifest) and
how it was split (``recipe``: ``val_fraction``, ``seed``, ``max_per_class``); loading the data the same
way gives back the same train and validation items. Quantization calibrates on the training items and
checks the INT8 model on the validation items, through the handler's own transform.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from graft.core.artifact import ModelCard
from graft.core.errors import BadInputError, DatasetError
from graft.core.images import load_rgb
from graft.core.transforms import eval_transform
from training.data import DatasetSplit, Item, load_image_folder, load_manifest

log = logging.getLogger(__name__)


def run_split(card: ModelCard) -> DatasetSplit | None:
    """The run's train/val split, or None when its data is no longer where training read it."""
    source = card.lineage.dataset_path
    if not source or not Path(source).exists():
        return None
    recipe = card.recipe
    val_fraction = float(recipe.get("val_fraction", 0.2))
    seed = int(recipe.get("seed", 0))
    cap = recipe.get("max_per_class")
    max_per_class = int(cap) if cap is not None else None
    src = Path(source)
    # Training decoded every image and recorded the ones it skipped: leave those out instead of decoding the
    # whole folder again (the same split comes back; only the images used later get decoded).
    skipped = frozenset(Path(s["path"]) for s in card.lineage.skipped if "path" in s)
    try:
        if src.is_file():
            data = load_manifest(src, max_per_class, seed, val_fraction, verify=False, exclude=skipped)
        else:
            data = load_image_folder(src, val_fraction, seed, max_per_class, verify=False, exclude=skipped)
    except DatasetError as e:
        log.warning("the run's data at %s cannot be loaded any more: %s", src, e)
        return None
    if data.digest != card.lineage.dataset_digest:
        log.warning(
            "the data at %s changed since training (digest %s, the run recorded %s): its split is used as it is now",
            src, data.digest, card.lineage.dataset_digest,
        )  # fmt: skip
    return data


def spread(items: Sequence[Item], n: int) -> list[Item]:
    """At most ``n`` items taken evenly across the (label-sorted) list, so every class is represented."""
    ordered = sorted(items, key=lambda i: (i.label, str(i.path)))
    if len(ordered) <= n:
        return ordered
    step = len(ordered) / n
    return [ordered[int(k * step)] for k in range(n)]


def tensors(card: ModelCard, paths: Sequence[Path]) -> tuple[np.ndarray, list[int]]:
    """(N×3×H×W float32 inputs, indices of the paths that decoded), through the handler's decoding and transform."""
    pre = card.preprocessing
    tf = eval_transform(pre)
    rows, kept = [], []
    for i, path in enumerate(paths):
        try:
            rows.append(tf(load_rgb(path, background=pre.background)).numpy())
        except (OSError, BadInputError, ValueError) as e:
            log.warning("skipping %s: %s", path, e)
            continue
        kept.append(i)
    if not rows:
        return np.empty((0, 3, card.preprocessing.crop, card.preprocessing.crop), np.float32), kept
    return np.stack(rows).astype(np.float32, copy=False), kept
