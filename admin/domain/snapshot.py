"""Dataset snapshots: the initial training data plus every collected sample, frozen in a manifest.

The manifest follows docs/architecture.md (items ``{path, label, split}``, split ``train`` |
``holdout``) and is written by :func:`graft.core.manifest.write_manifest`, which also computes its digest.
Training never reads the holdout, not even for early stopping: it carves its validation split out of
the training items, so the gate judges both models on images neither was selected on. A job trains
and is judged on exactly the snapshot it took, whatever arrives meanwhile.

The digest reads no file twice: a sample's sha256 is its id (content-addressed, hashed once at intake), and a
base file's is cached by path, size and modification time (:class:`FileHashes`), so a job's snapshot costs
one query and a ``stat`` per base file, not a read of every image.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from admin.domain.samples import split_for
from admin.store.samples import SampleStore
from graft.core.errors import DatasetError
from graft.core.images import IMAGE_SUFFIXES
from graft.core.manifest import Item, Split, read_manifest, write_manifest
from graft.core.util import file_sha256

log = logging.getLogger(__name__)

_VAL_DIRS = ("val", "valid", "validation")


class FileHashes:
    """sha256 of files, cached by (path, size, mtime): a file changed in place is read again."""

    def __init__(self) -> None:
        self._known: dict[Path, tuple[int, int, str]] = {}
        self._lock = threading.Lock()

    def sha256(self, path: Path) -> str:
        st = os.stat(path)
        with self._lock:
            hit = self._known.get(path)
        if hit is not None and hit[:2] == (st.st_size, st.st_mtime_ns):
            return hit[2]
        sha = file_sha256(path)
        with self._lock:
            self._known[path] = (st.st_size, st.st_mtime_ns, sha)
        return sha


# One per process: the admin takes a snapshot per job, and the base data rarely changes between them.
_BASE_HASHES = FileHashes()


@dataclass
class Snapshot:
    items: list[Item]
    max_sample_seq: int
    num_samples: int
    digest: str = ""
    manifest: Path | None = None
    labels: list[str] = field(default_factory=list)
    shas: dict[Path, str] = field(default_factory=dict)  # each item's file sha256, known without reading it

    def sha_of(self, path: Path) -> str:
        return self.shas.get(path) or file_sha256(path)

    @property
    def holdout(self) -> list[Item]:
        return [i for i in self.items if i.split == "holdout"]

    @property
    def train(self) -> list[Item]:
        return [i for i in self.items if i.split == "train"]


def _scan(root: Path, split: Split | None, holdout_fraction: float) -> list[Item]:
    items = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(class_dir.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                # A flat folder is split like collected samples: by content hash, never by chance.
                s = split or split_for(_BASE_HASHES.sha256(f), holdout_fraction)
                items.append(Item(f.resolve(), class_dir.name, s))
    return items


def base_items(base_data: Path | None, base_manifest: Path | None, holdout_fraction: float) -> list[Item]:
    """The data the first model was trained on; its ``val`` part stays holdout forever."""
    if base_manifest is not None:
        items, _ = read_manifest(Path(base_manifest))
        # A base manifest's "val" (the first model's validation data) is holdout from then on.
        return [Item(i.path, i.label, "train" if i.split == "train" else "holdout") for i in items]
    if base_data is None:
        return []
    root = Path(base_data)
    if not root.is_dir():
        raise DatasetError(f"base data folder {root} does not exist")
    val_dir = next((root / n for n in _VAL_DIRS if (root / n).is_dir()), None)
    if (root / "train").is_dir() and val_dir is not None:
        return _scan(root / "train", "train", holdout_fraction) + _scan(val_dir, "holdout", holdout_fraction)
    return _scan(root, None, holdout_fraction)


def take_snapshot(store: SampleStore, base: list[Item], hashes: FileHashes | None = None) -> Snapshot:
    """Base items plus samples up to now. A sample whose bytes equal a base image keeps the base split,
    so an image of the base holdout posted again as a sample cannot leak into training."""
    hashes = hashes or _BASE_HASHES
    upto = store.max_seq()
    base_by_hash: dict[str, Item] = {}
    for i in base:
        try:
            base_by_hash[hashes.sha256(i.path)] = i  # the same bytes twice: the last one stays
        except OSError:
            continue
    missing = len(base) - len(base_by_hash)
    if missing:
        log.warning("snapshot: %d base image(s) missing or duplicated; left out", missing)
    shas = {i.path: sha for sha, i in base_by_hash.items()}
    items = list(base_by_hash.values())
    samples = store.snapshot(upto)
    for s in samples:
        if s.id not in base_by_hash:
            items.append(Item(s.path, s.label, s.split))
            shas[s.path] = s.id  # the content address: the sha256 of the file's bytes
    labels = sorted({i.label for i in items if i.split == "train"})
    return Snapshot(items, upto, len(samples), labels=labels, shas=shas)


def write_snapshot(snapshot: Snapshot, path: Path) -> Snapshot:
    """Freeze the snapshot as a manifest with the training library's own writer (same digest rules)."""
    if len(snapshot.labels) < 2:
        raise DatasetError(f"need training images of at least 2 labels to train; have {snapshot.labels}")
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.digest = write_manifest(snapshot.items, path, snapshot.sha_of)
    snapshot.manifest = path
    return snapshot


def hold_back_new_labels(snapshot: Snapshot, known: list[str], min_samples: int) -> list[str]:
    """Leave out labels the model in service does not know that have fewer than ``min_samples`` training
    images (a class needs evidence before it takes part); returns what the job report must say."""
    counts: dict[str, int] = {}
    for item in snapshot.train:
        counts[item.label] = counts.get(item.label, 0) + 1
    small = sorted(label for label, n in counts.items() if label not in known and n < min_samples)
    if not small:
        return []
    snapshot.items = [i for i in snapshot.items if i.label not in small]
    snapshot.labels = [label for label in snapshot.labels if label not in small]
    listed = ", ".join(f"{label} ({counts[label]})" for label in small)
    return [f"new label(s) left out until they have {min_samples} training samples: {listed}"]
