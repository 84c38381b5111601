"""Which files of a folder to upload, under which label, in batches the admin accepts."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graft.core.images import IMAGE_SUFFIXES  # what the admin decodes

# The admin refuses a batch over 64 files (GRAFT_MAX_BATCH_FILES) or 64 MiB (GRAFT_MAX_BATCH_BYTES) by default;
# smaller batches stay well inside both and show progress more often.
BATCH_FILES = 32
BATCH_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Item:
    path: Path
    label: str


@dataclass
class UploadReport:
    """What a folder upload did: stored (new), duplicates, how many went to the holdout, what was refused."""

    stored: int = 0
    duplicates: int = 0
    holdout: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)  # (file, the server's reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why it was not sent)
    by_label: dict[str, dict[str, int]] = field(default_factory=dict)  # label -> {stored, duplicates, holdout}

    def add(self, label: str, sample: dict[str, Any]) -> None:
        counts = self.by_label.setdefault(label, {"stored": 0, "duplicates": 0, "holdout": 0})
        if sample.get("duplicate"):
            self.duplicates += 1
            counts["duplicates"] += 1
            return
        self.stored += 1
        counts["stored"] += 1
        if sample.get("split") == "holdout":
            self.holdout += 1
            counts["holdout"] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "stored": self.stored, "duplicates": self.duplicates, "holdout": self.holdout,
            "refused": [{"file": f, "reason": r} for f, r in self.refused],
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "by_label": self.by_label,
        }  # fmt: skip


def _images(folder: Path, skipped: list[tuple[str, str]]) -> Iterator[Path]:
    for p in sorted(folder.rglob("*")):
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            yield p
        else:
            skipped.append((str(p), f"not an image file name ({p.suffix or 'no suffix'})"))


def collect(folder: Path, label: str | None, skipped: list[tuple[str, str]]) -> list[Item]:
    """``label`` given: every image under ``folder``. Else each subfolder is a label (``folder/<label>/...``);
    files directly in ``folder`` are skipped, as they have no label."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    if label is not None:
        return [Item(p, label) for p in _images(folder, skipped)]
    items: list[Item] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            items += [Item(p, entry.name) for p in _images(entry, skipped)]
        elif entry.is_file():
            skipped.append((str(entry), "not in a <label>/ subfolder: give --label to upload a folder of one label"))
    return items


def batches(items: Sequence[Item], max_files: int = BATCH_FILES, max_bytes: int = BATCH_BYTES) -> Iterator[list[Item]]:
    """Consecutive runs of ``items`` with one label each, within ``max_files`` and ``max_bytes``."""
    batch: list[Item] = []
    size = 0
    for item in items:
        n = item.path.stat().st_size
        if batch and (len(batch) >= max_files or size + n > max_bytes or item.label != batch[0].label):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += n
    if batch:
        yield batch
