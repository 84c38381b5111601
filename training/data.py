"""Datasets: image folders and manifests, deterministic stratified splits, robust decoding.

Manifests and their items are :mod:`graft.core.manifest`'s; images decode under
:mod:`graft.core.images`' policy, the one the handler and the admin apply too.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from graft.core.errors import BadInputError, DatasetError
from graft.core.images import is_readable_image, load_rgb
from graft.core.manifest import Item, Split, dataset_digest, read_manifest

log = logging.getLogger(__name__)

_VAL_DIR_NAMES = ("val", "valid", "validation")
__all__ = [
    "DatasetSplit", "ImageDataset", "Item", "is_readable_image", "load_image_folder", "load_manifest", "load_rgb",
]  # fmt: skip


@dataclass
class DatasetSplit:
    """Everything training needs to know about the data, plus its fingerprint."""

    labels: list[str]
    train: list[Item]
    val: list[Item]
    digest: str
    skipped: int = 0
    source: str = ""

    def index(self, samples: Sequence[Item]) -> list[tuple[Path, int]]:
        pos = {label: i for i, label in enumerate(self.labels)}
        return [(s.path, pos[s.label]) for s in samples]

    def class_counts(self) -> dict[str, int]:
        c = Counter(s.label for s in self.train)
        return {label: c.get(label, 0) for label in self.labels}


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_class_folder(root: Path, split: Split) -> tuple[list[Item], int]:
    samples: list[Item] = []
    skipped = 0
    for cdir in _class_dirs(root):
        for f in sorted(cdir.rglob("*")):
            if not f.is_file() or f.name.startswith("."):
                continue
            if is_readable_image(f):
                samples.append(Item(f.resolve(), cdir.name, split))
            else:
                skipped += 1
                log.debug("skipping unreadable file %s", f)
    return samples, skipped


def stratified_split(samples: Sequence[Item], val_fraction: float, seed: int) -> list[Item]:
    """Assign ``val`` to about ``val_fraction`` of each class, the same way for the same seed."""
    by_label: dict[str, list[Item]] = {}
    for s in sorted(samples, key=lambda s: (s.label, str(s.path))):
        by_label.setdefault(s.label, []).append(s)
    out: list[Item] = []
    for label, items in sorted(by_label.items()):
        rng = random.Random(f"{seed}:{label}")
        order = list(range(len(items)))
        rng.shuffle(order)
        n_val = max(1, round(len(items) * val_fraction)) if len(items) > 1 else 0
        val_idx = set(order[:n_val])
        out.extend(Item(s.path, s.label, "val" if i in val_idx else "train") for i, s in enumerate(items))
    return out


def _cap(samples: list[Item], max_per_class: int | None, seed: int) -> list[Item]:
    if max_per_class is None:
        return samples
    groups: dict[tuple[str, str], list[Item]] = {}
    for s in samples:
        groups.setdefault((s.label, s.split), []).append(s)
    out: list[Item] = []
    for key in sorted(groups):
        items = sorted(groups[key], key=lambda s: str(s.path))
        random.Random(f"{seed}:{key}").shuffle(items)
        out.extend(items[:max_per_class])
    return out


def _finish(samples: list[Item], skipped: int, source: str) -> DatasetSplit:
    labels = sorted({s.label for s in samples})
    if len(labels) < 2:
        raise DatasetError(f"{source}: found {len(labels)} class(es) with readable images; need at least 2")
    train = [s for s in samples if s.split == "train"]
    val = [s for s in samples if s.split == "val"]
    if not train or not val:
        raise DatasetError(f"{source}: need images in both train and val (have {len(train)} and {len(val)})")
    if skipped:
        log.warning("skipped %d unreadable or non-image file(s) under %s", skipped, source)
    return DatasetSplit(labels, train, val, dataset_digest(samples), skipped, source)


def load_image_folder(
    root: Path, val_fraction: float = 0.2, seed: int = 0, max_per_class: int | None = None
) -> DatasetSplit:
    """``root/<label>/*`` (split by seed) or ``root/train/<label>`` + ``root/val/<label>``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {str(root)!r} does not exist")
    train_dir = root / "train"
    val_dir = next((root / n for n in _VAL_DIR_NAMES if (root / n).is_dir()), None)
    if train_dir.is_dir() and val_dir is not None:
        train, s1 = _scan_class_folder(train_dir, "train")
        val, s2 = _scan_class_folder(val_dir, "val")
        samples, skipped = train + val, s1 + s2
    else:
        found, skipped = _scan_class_folder(root, "train")
        samples = stratified_split(found, val_fraction, seed)
    return _finish(_cap(samples, max_per_class, seed), skipped, str(root.resolve()))


def load_manifest(
    path: Path, max_per_class: int | None = None, seed: int = 0, val_fraction: float = 0.2
) -> DatasetSplit:
    """Train/val items of a manifest. Holdout items are left out; without val items, a stratified
    ``val_fraction`` of the train items becomes the validation split (by seed)."""
    path = Path(path)
    items, _ = read_manifest(path)
    kept = [s for s in items if s.path.is_file() and is_readable_image(s.path)]
    skipped = len(items) - len(kept)
    holdout = [s for s in kept if s.split == "holdout"]
    kept = [s for s in kept if s.split != "holdout"]
    if holdout:
        log.info("manifest: %d holdout item(s) left out of training", len(holdout))
    if not any(s.split == "val" for s in kept):
        kept = stratified_split(kept, val_fraction, seed)
    return _finish(_cap(kept, max_per_class, seed), skipped, str(path.resolve()))


class ImageDataset(Dataset[tuple[torch.Tensor, int] | None]):
    """(path, class index) pairs; a file that fails to decode yields ``None`` (dropped by :func:`collate`)."""

    def __init__(self, items: Sequence[tuple[Path, int]], transform: Callable[[Any], torch.Tensor]):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        path, target = self.items[i]
        try:
            return self.transform(load_rgb(path)), target
        except (OSError, BadInputError, ValueError) as e:
            log.warning("skipping %s: %s", path, e)
            return None


def collate(batch: Sequence[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor]:
    good = [b for b in batch if b is not None]
    if not good:
        return torch.empty(0, 3, 1, 1), torch.empty(0, dtype=torch.long)
    return torch.stack([b[0] for b in good]), torch.tensor([b[1] for b in good], dtype=torch.long)


def class_weights(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1 over the classes present."""
    counts = torch.bincount(torch.as_tensor(list(targets), dtype=torch.long), minlength=num_classes).float()
    w = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return w
