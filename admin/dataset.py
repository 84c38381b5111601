"""Dataset snapshots: the initial training data plus every collected sample, frozen in a manifest.

The manifest follows docs/architecture.md (items ``{path, label, split}``, split ``train`` |
``holdout``) and is written by ``training.data.write_manifest``, which also computes its digest.
Training never reads the holdout, not even for early stopping: it carves its validation split out of
the training items, so the gate judges both models on images neither was selected on. A job trains
and is judged on exactly the snapshot it took, whatever arrives meanwhile.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from admin.samples import FORMATS, SampleStore, split_for
from graft.artifact import file_sha256
from graft.errors import DatasetError

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = {"." + ext for ext in FORMATS.values()} | {".jpeg"}
_VAL_DIRS = ("val", "valid", "validation")


@dataclass(frozen=True)
class Item:
    path: Path
    label: str
    split: str  # "train" or "holdout"


@dataclass
class Snapshot:
    items: list[Item]
    max_sample_seq: int
    num_samples: int
    digest: str = ""
    manifest: Path | None = None
    labels: list[str] = field(default_factory=list)

    @property
    def holdout(self) -> list[Item]:
        return [i for i in self.items if i.split == "holdout"]

    @property
    def train(self) -> list[Item]:
        return [i for i in self.items if i.split == "train"]


def _scan(root: Path, split: str | None, holdout_fraction: float) -> list[Item]:
    items = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(class_dir.iterdir()):
            if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES:
                # A flat folder is split like collected samples: by content hash, never by chance.
                s = split or ("holdout" if split_for(file_sha256(f), holdout_fraction) == "holdout" else "train")
                items.append(Item(f.resolve(), class_dir.name, s))
    return items


def base_items(base_data: Path | None, base_manifest: Path | None, holdout_fraction: float) -> list[Item]:
    """The data the first model was trained on; its ``val`` part stays holdout forever."""
    if base_manifest is not None:
        try:
            body = json.loads(Path(base_manifest).read_text())
            # A base manifest's "val" (the first model's validation data) is holdout from then on.
            return [
                Item(Path(i["path"]), str(i["label"]), "train" if i["split"] == "train" else "holdout")
                for i in body["items"]
            ]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"cannot read the base manifest {base_manifest}: {e}") from e
    if base_data is None:
        return []
    root = Path(base_data)
    if not root.is_dir():
        raise DatasetError(f"base data folder {root} does not exist")
    val_dir = next((root / n for n in _VAL_DIRS if (root / n).is_dir()), None)
    if (root / "train").is_dir() and val_dir is not None:
        return _scan(root / "train", "train", holdout_fraction) + _scan(val_dir, "holdout", holdout_fraction)
    return _scan(root, None, holdout_fraction)


def take_snapshot(store: SampleStore, base: list[Item]) -> Snapshot:
    """Base items plus samples up to now. A sample whose bytes equal a base image keeps the base split,
    so an image of the base holdout posted again as a sample cannot leak into training."""
    upto = store.max_seq()
    base_by_hash = {file_sha256(i.path): i for i in base if i.path.is_file()}
    missing = len(base) - len(base_by_hash)
    if missing:
        log.warning("snapshot: %d base image(s) missing or duplicated; left out", missing)
    items = list(base_by_hash.values())
    samples = store.snapshot(upto)
    for path, label, split, sha in samples:
        if sha in base_by_hash:
            continue
        items.append(Item(path, label, "holdout" if split == "holdout" else "train"))
    labels = sorted({i.label for i in items if i.split == "train"})
    return Snapshot(items, upto, len(samples), labels=labels)


def write_snapshot(snapshot: Snapshot, path: Path) -> Snapshot:
    """Freeze the snapshot as a manifest with the training library's own writer (same digest rules)."""
    from training.data import write_manifest

    if len(snapshot.labels) < 2:
        raise DatasetError(f"need training images of at least 2 labels to train; have {snapshot.labels}")
    items = [{"path": str(i.path), "label": i.label, "split": i.split} for i in snapshot.items]
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.digest = write_manifest(items, path)
    snapshot.manifest = path
    return snapshot
