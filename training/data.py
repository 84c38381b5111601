"""Datasets: image folders and manifests, deterministic stratified splits, robust decoding.

Manifests and their items are :mod:`graft.core.manifest`'s; images decode under
:mod:`graft.core.images`' policy, the one the handler and the admin apply too.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from graft.core.errors import BadInputError, DatasetError
from graft.core.images import is_readable_image, load_rgb
from graft.core.manifest import Item, dataset_digest, read_manifest
from graft.core.preprocessing import WHITE
from training.layout import Layout, explain, find_layout
from training.scan import ImageFacts, Skipped, scan_files

log = logging.getLogger(__name__)

__all__ = [
    "Collected", "DatasetSplit", "ImageDataset", "Item", "Skipped", "collect_folder", "collect_manifest",
    "is_readable_image", "load_image_folder", "load_manifest", "load_rgb",
]  # fmt: skip


@dataclass
class DatasetSplit:
    """Everything training needs to know about the data, plus its fingerprint."""

    labels: list[str]
    train: list[Item]
    val: list[Item]
    digest: str
    skipped: list[Skipped] = field(default_factory=list)
    source: str = ""
    facts: dict[Path, ImageFacts] = field(default_factory=dict)  # every used image, when decoded in full

    def index(self, samples: Sequence[Item]) -> list[tuple[Path, int]]:
        pos = {label: i for i, label in enumerate(self.labels)}
        return [(s.path, pos[s.label]) for s in samples]

    def class_counts(self) -> dict[str, int]:
        c = Counter(s.label for s in self.train)
        return {label: c.get(label, 0) for label in self.labels}

    @property
    def transparent(self) -> int:
        """Used images with transparency (composited on the model's background)."""
        return sum(1 for f in self.facts.values() if f.transparent)


@dataclass
class Collected:
    """The usable items of a folder or manifest, split, and what was left out; nothing refused yet."""

    source: str
    items: list[Item]
    skipped: list[Skipped]
    facts: dict[Path, ImageFacts]
    layout: Layout | None = None  # None for a manifest


def _rank(seed: int, item: Item) -> tuple[bytes, str]:
    """A per-image draw that does not depend on the other images (file name, label and seed only)."""
    key = f"{seed}:{item.label}:{item.path.name}".encode()
    return hashlib.blake2b(key, digest_size=8).digest(), str(item.path)


def _first_ranked(items: Sequence[Item], k: int, seed: int) -> list[tuple[Item, bool]]:
    """Each item in path order, with whether it is among the ``k`` of lowest :func:`_rank`."""
    chosen = {id(s) for s in sorted(items, key=lambda s: _rank(seed, s))[:k]}
    return [(s, id(s) in chosen) for s in sorted(items, key=lambda s: str(s.path))]


def stratified_split(samples: Sequence[Item], val_fraction: float, seed: int) -> list[Item]:
    """Assign ``val`` to about ``val_fraction`` of each class, the same way for the same seed.

    Each image draws its own rank from its name, so when images are added, the images of before keep
    their split, except the few at the boundary that the grown validation share moves. A shuffle of the
    whole class redrew a fifth of the training images on every retrain: a candidate trained on a superset of
    the champion's data then did not train on what the champion trained on (docs/concepts/gate.md)."""
    by_label: dict[str, list[Item]] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    out: list[Item] = []
    for _label, items in sorted(by_label.items()):
        n_val = max(1, round(len(items) * val_fraction)) if len(items) > 1 else 0
        out.extend(Item(s.path, s.label, "val" if val else "train") for s, val in _first_ranked(items, n_val, seed))
    return out


def _cap(samples: list[Item], max_per_class: int | None, seed: int) -> list[Item]:
    if max_per_class is None:
        return samples
    groups: dict[tuple[str, str], list[Item]] = {}
    for s in samples:
        groups.setdefault((s.label, s.split), []).append(s)
    out: list[Item] = []
    for key in sorted(groups):
        # the same per-image rank as the split: a grown folder keeps the images it kept before
        out.extend(s for s, kept in _first_ranked(groups[key], max_per_class, seed) if kept)
    return out


def _header_check(items: list[Item]) -> tuple[list[Item], list[Skipped]]:
    """Cheap first pass: files that are not images of an accepted format (or are missing) go."""
    kept: list[Item] = []
    skipped: list[Skipped] = []
    for item in items:
        if not item.path.is_file():
            skipped.append(Skipped(item.path, "file not found"))
        elif is_readable_image(item.path):
            kept.append(item)
        else:
            skipped.append(Skipped(item.path, "not an image of an accepted format (JPEG, PNG, WebP, BMP, GIF)"))
    return kept, skipped


def _decode_check(
    items: list[Item], verify: bool, exclude: frozenset[Path], background: tuple[int, int, int]
) -> tuple[list[Item], list[Skipped], dict[Path, ImageFacts]]:
    """Decode every item in full (``verify``); without it, drop only the ``exclude``d paths (a run's recorded
    skips: the export rebuilds the run's split without decoding the folder again)."""
    if not verify:
        return [i for i in items if i.path not in exclude], [], {}
    facts, skipped = scan_files([i.path for i in items], background)
    return [i for i in items if i.path in facts], skipped, facts


def _select(
    found: list[Item], split_by_seed: bool, val_fraction: float, seed: int, max_per_class: int | None
) -> list[Item]:
    return _cap(stratified_split(found, val_fraction, seed) if split_by_seed else found, max_per_class, seed)


def collect_folder(
    root: Path, val_fraction: float = 0.2, seed: int = 0, max_per_class: int | None = None, verify: bool = True,
    exclude: frozenset[Path] = frozenset(), background: tuple[int, int, int] = WHITE,
) -> Collected:  # fmt: skip
    """The usable images of ``root/<label>/*`` (split by seed) or ``root/train/<label>`` + ``root/val/<label>``.

    Order: header check of every file, split, cap, then a full decode of what is kept (``verify``).
    """
    layout = find_layout(Path(root))
    found, skipped = _header_check(layout.files)
    chosen = _select(found, not layout.split_dirs, val_fraction, seed, max_per_class)
    kept, broken, facts = _decode_check(chosen, verify, exclude, background)
    return Collected(str(layout.root.resolve()), kept, skipped + broken, facts, layout)


def collect_manifest(
    path: Path, max_per_class: int | None = None, seed: int = 0, val_fraction: float = 0.2, verify: bool = True,
    exclude: frozenset[Path] = frozenset(), background: tuple[int, int, int] = WHITE,
) -> Collected:  # fmt: skip
    """Train/val items of a manifest. Holdout items are left out; without val items, a stratified
    ``val_fraction`` of the train items becomes the validation split (by seed)."""
    path = Path(path)
    items, _ = read_manifest(path)
    holdout = [s for s in items if s.split == "holdout"]
    if holdout:
        log.info("manifest: %d holdout item(s) left out of training", len(holdout))
    found, skipped = _header_check([s for s in items if s.split != "holdout"])
    by_seed = not any(s.split == "val" for s in found)
    chosen = _select(found, by_seed, val_fraction, seed, max_per_class)
    kept, broken, facts = _decode_check(chosen, verify, exclude, background)
    return Collected(str(path.resolve()), kept, skipped + broken, facts)


def finish(c: Collected) -> DatasetSplit:
    """The split training uses; DatasetError (with the fix) when it cannot train at all."""
    labels = sorted({s.label for s in c.items})
    problem = explain(c.layout, labels) if c.layout is not None else None
    if problem is None and len(labels) < 2:
        problem = f"{c.source}: found {len(labels)} class(es) with readable images; need at least 2"
    if problem is not None:
        raise DatasetError(problem)
    train = [s for s in c.items if s.split == "train"]
    val = [s for s in c.items if s.split == "val"]
    if not train or not val:
        raise DatasetError(
            f"{c.source}: need images in both train and val (have {len(train)} and {len(val)}): add images, or "
            "leave out the val folder to split one folder per label by seed"
        )
    return DatasetSplit(labels, train, val, dataset_digest(c.items), c.skipped, c.source, c.facts)


def load_image_folder(
    root: Path, val_fraction: float = 0.2, seed: int = 0, max_per_class: int | None = None, verify: bool = True,
    exclude: frozenset[Path] = frozenset(), background: tuple[int, int, int] = WHITE,
) -> DatasetSplit:  # fmt: skip
    """``root/<label>/*`` (split by seed) or ``root/train/<label>`` + ``root/val/<label>``, ready to train."""
    return finish(collect_folder(root, val_fraction, seed, max_per_class, verify, exclude, background))


def load_manifest(
    path: Path, max_per_class: int | None = None, seed: int = 0, val_fraction: float = 0.2, verify: bool = True,
    exclude: frozenset[Path] = frozenset(), background: tuple[int, int, int] = WHITE,
) -> DatasetSplit:  # fmt: skip
    """A manifest's train/val items, ready to train (see :func:`collect_manifest`)."""
    return finish(collect_manifest(path, max_per_class, seed, val_fraction, verify, exclude, background))


class ImageDataset(Dataset[tuple[torch.Tensor, int] | None]):
    """(path, class index) pairs; a file that fails to decode yields ``None`` (dropped by :func:`collate`)."""

    def __init__(self, items: Sequence[tuple[Path, int]], transform: Callable[[Any], torch.Tensor],
                 background: tuple[int, int, int] = WHITE) -> None:  # fmt: skip
        self.items = list(items)
        self.transform = transform
        self.background = background  # the model card's: transparency composited as the handler composites it

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        path, target = self.items[i]
        try:
            return self.transform(load_rgb(path, background=self.background)), target
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
