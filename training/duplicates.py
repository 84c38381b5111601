"""Duplicate images in a data set: the same file twice, or the same picture re-encoded, resized or lightly edited.

A copy in both train and val makes validation accuracy look better than it is; a copy under two labels
teaches both. Exact duplicates share their bytes' SHA-256; near-duplicates have 64-bit difference hashes
within :data:`NEAR_BITS` and 16x16 thumbnails that correlate (the coarse hash alone pairs different pictures
of small, similar images), the same two-step test the admin applies to its holdout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graft.core.images import thumb_similarity
from graft.core.manifest import Item
from training.scan import ImageFacts

NEAR_BITS = 6
SAME_PICTURE = 0.92
_ROWS = 512  # rows of the pairwise distance matrix computed at once (512 x n uint64)


@dataclass(frozen=True)
class Group:
    items: tuple[Item, ...]

    @property
    def scope(self) -> str:
        """``labels`` (one picture, several labels), ``splits`` (in train and val) or ``within``."""
        if len({i.label for i in self.items}) > 1:
            return "labels"
        if len({i.split for i in self.items}) > 1:
            return "splits"
        return "within"


def _groups(items: Sequence[Item], pairs: list[tuple[int, int]]) -> list[Group]:
    """Connected components of ``pairs`` over ``items`` (union-find), largest first."""
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[root(a)] = root(b)
    members: dict[int, list[int]] = {}
    for i in {i for pair in pairs for i in pair}:
        members.setdefault(root(i), []).append(i)
    groups = [Group(tuple(items[i] for i in sorted(m))) for m in members.values()]
    return sorted(groups, key=lambda g: (-len(g.items), str(g.items[0].path)))


def exact_duplicates(items: Sequence[Item], facts: Mapping[Path, ImageFacts]) -> list[Group]:
    first: dict[str, int] = {}
    pairs = []
    for i, item in enumerate(items):
        j = first.setdefault(facts[item.path].sha256, i)
        if j != i:
            pairs.append((j, i))
    return _groups(items, pairs)


def _close_pairs(hashes: np.ndarray) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose hashes differ in at most NEAR_BITS bits."""
    out: list[tuple[int, int]] = []
    for start in range(0, len(hashes), _ROWS):
        block = hashes[start : start + _ROWS, None] ^ hashes[None, :]
        rows, cols = np.nonzero(np.bitwise_count(block) <= NEAR_BITS)
        out.extend((start + int(r), int(c)) for r, c in zip(rows, cols, strict=True) if start + int(r) < int(c))
    return out


def near_duplicates(items: Sequence[Item], facts: Mapping[Path, ImageFacts]) -> list[Group]:
    """Groups of different files that show the same picture (flat, blank pictures are left to their own check)."""
    chosen = [i for i in items if not facts[i.path].blank]
    hashes = np.array([facts[i.path].dhash for i in chosen], dtype=np.uint64)
    pairs = []
    for a, b in _close_pairs(hashes):
        fa, fb = facts[chosen[a].path], facts[chosen[b].path]
        if fa.sha256 != fb.sha256 and thumb_similarity(fa.thumb, fb.thumb) >= SAME_PICTURE:
            pairs.append((a, b))
    return _groups(chosen, pairs)
