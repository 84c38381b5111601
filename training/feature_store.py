"""Where the frozen stages' output per image is kept (:mod:`training.frozen_features`), and how it is pruned:
numpy and files only, so the admin can prune it when sample files are deleted without importing torch.

A store is one folder per cut (named by a digest of what decides the cut's output): float32 ``.npy`` chunks that
are never changed, plus an index (image key -> chunk, row) written atomically. An image's key is its path, size
and modification time (:func:`graft.core.util.file_key`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graft.core.util import file_key, write_atomic

log = logging.getLogger(__name__)

INDEX = "index.json"
# The champion's and the candidate's frozen stages may differ (a new backbone): keep both, drop older ones.
KEEP_STORES = 2


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

    def prune(self, removed: Collection[Path] | None = None) -> int:
        """Drop the rows of images that are gone or changed since they were kept; a chunk that held one is written
        again with its live rows only, so an erased picture's features leave the disk. Returns the rows dropped.

        ``removed``: the files just deleted (resolved paths), when the caller knows them: only their rows are
        dropped, without a look at every other kept file (a delete at 20,000 kept images is then one chunk's
        rewrite, not 20,000 file checks)."""
        if removed is not None:
            gone = {str(p) for p in removed}
            dead = {k for k in self.index if k.rsplit("|", 2)[0] in gone}
        else:
            dead = {k for k in self.index if file_key(Path(k.rsplit("|", 2)[0])) != k}
        if not dead:
            return 0
        try:
            index = {k: v for k, v in self.index.items() if k not in dead}
            stale = sorted({self.index[k][0] for k in dead})
            in_chunk: dict[str, list[str]] = {c: [] for c in stale}
            for k, (c, _) in index.items():
                if c in in_chunk:
                    in_chunk[c].append(k)
            for chunk, live in in_chunk.items():
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


def prune_stores(root: Path, removed: Collection[Path] | None = None) -> int:
    """:meth:`FeatureStore.prune` every store under ``root`` (after sample files were deleted; ``removed``: which, when
    known): rows dropped."""
    try:
        folders = [d for d in root.iterdir() if d.is_dir()]
    except OSError:
        return 0
    return sum(FeatureStore(d).prune(removed) for d in folders)
