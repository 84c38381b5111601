"""Labelled samples on disk and in SQLite: content-addressed files written atomically, one row each.

A sample's id is the sha256 of its bytes and its file lives at ``samples/ab/<sha256>.<ext>``. The
caller (admin/domain/samples.py) decides label and split; this module only stores, and refuses the
same bytes under a second label. A batch is stored in one transaction: all of it or none of it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from admin.store.db import Database
from admin.store.rows import SampleMeta, SampleRef, SampleSplit, StoredSample
from graft.core.errors import ConflictError
from graft.core.images import Header
from graft.core.util import utc_now, write_atomic


@dataclass(frozen=True)
class NewSample:
    """An upload that passed validation, ready to store."""

    data: bytes
    label: str
    header: Header
    split: SampleSplit
    sha256: str  # of ``data``: the content address


def content_address(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class SampleStore:
    """Samples on disk (content-addressed) and in SQLite (label, split, arrival order)."""

    def __init__(self, db: Database, root: Path):
        self.db = db
        self.root = Path(root)

    def add(self, sample: NewSample) -> StoredSample:
        return self.add_many([sample])[0]

    def add_many(self, samples: Sequence[NewSample]) -> list[StoredSample]:
        """Store every sample or none: a conflict anywhere (with a stored sample or within the batch) stores nothing.

        Files first, rows second, in one transaction: a crash in between leaves orphan files, never a row
        without its file. A byte-identical duplicate under the same label is recognised, not stored twice.
        """
        shas = [s.sha256 for s in samples]
        first_label: dict[str, str] = {}
        for sha, s in zip(shas, samples, strict=True):
            if first_label.setdefault(sha, s.label) != s.label:
                raise ConflictError(
                    f"the same image appears twice in this request, as {first_label[sha]!r} and {s.label!r}"
                )
        for sha, s in zip(shas, samples, strict=True):
            self._check_label(sha, s.label)  # refuse before writing any file
        paths = {}
        for sha, s in zip(shas, samples, strict=True):
            rel = Path("samples") / sha[:2] / f"{sha}.{s.header.extension}"
            if sha not in paths and not (self.root / rel).is_file():
                write_atomic(self.root / rel, s.data)
            paths[sha] = rel
        out: list[StoredSample] = []
        with self.db.tx() as conn:
            for sha, s in zip(shas, samples, strict=True):
                row = conn.execute("SELECT seq, label, split FROM samples WHERE sha256 = ?", (sha,)).fetchone()
                if row is not None:  # stored before, or earlier in this batch, or raced in from another request
                    if row["label"] != s.label:
                        raise ConflictError(_conflict(sha, row["label"], s.label))
                    out.append(StoredSample(id=sha, label=s.label, split=row["split"], duplicate=True, seq=row["seq"]))
                    continue
                cur = conn.execute(
                    "INSERT INTO samples (sha256, label, split, path, size, format, width, height, received_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sha, s.label, s.split, str(paths[sha]), len(s.data), s.header.format, s.header.width,
                     s.header.height, utc_now()),
                )  # fmt: skip
                seq = int(cur.lastrowid or 0)
                out.append(StoredSample(id=sha, label=s.label, split=s.split, duplicate=False, seq=seq))
        return out

    def _check_label(self, sha: str, label: str) -> None:
        row = self.db.one("SELECT label FROM samples WHERE sha256 = ?", (sha,))
        if row is not None and row["label"] != label:
            raise ConflictError(_conflict(sha, row["label"], label))

    def get(self, sample_id: str) -> SampleMeta | None:
        row = self.db.one("SELECT * FROM samples WHERE sha256 = ?", (sample_id,))
        return None if row is None else _meta(row)

    def count_since(self, seq: int) -> int:
        row = self.db.one("SELECT COUNT(*) AS n FROM samples WHERE seq > ?", (seq,))
        return int(row["n"]) if row else 0

    def max_seq(self) -> int:
        row = self.db.one("SELECT COALESCE(MAX(seq), 0) AS m FROM samples")
        return int(row["m"]) if row else 0

    def count(self) -> int:
        row = self.db.one("SELECT COUNT(*) AS n FROM samples")
        return int(row["n"]) if row else 0

    def counts(self) -> dict[str, dict[str, int]]:
        """``{label: {"train": n, "holdout": m}}`` for every label seen."""
        out: dict[str, dict[str, int]] = {}
        for row in self.db.all("SELECT label, split, COUNT(*) AS n FROM samples GROUP BY label, split"):
            out.setdefault(row["label"], {"train": 0, "holdout": 0})[row["split"]] = int(row["n"])
        return out

    def snapshot(self, up_to_seq: int) -> list[SampleRef]:
        """Every sample up to ``up_to_seq``, in arrival order, with its absolute path."""
        rows = self.db.all(
            "SELECT sha256, label, split, path, seq FROM samples WHERE seq <= ? ORDER BY seq", (up_to_seq,)
        )
        return [_ref(self.root, r) for r in rows]

    def missing_files(self) -> list[str]:
        """Ids of samples whose file is gone: should always be empty (the crash test checks it)."""
        rows = self.db.all("SELECT sha256, path FROM samples")
        return [r["sha256"] for r in rows if not (self.root / r["path"]).is_file()]


def _conflict(sha: str, stored: str, asked: str) -> str:
    return f"this image is already stored as sample {sha} with label {stored!r}, not {asked!r}"


def _ref(root: Path, row: Any) -> SampleRef:
    return SampleRef(id=row["sha256"], label=row["label"], split=row["split"], path=(root / row["path"]).resolve(),
                     seq=row["seq"])  # fmt: skip


def _meta(row: Any) -> SampleMeta:
    return SampleMeta(
        id=row["sha256"], label=row["label"], split=row["split"], size=row["size"], format=row["format"],
        width=row["width"], height=row["height"], received_at=row["received_at"],
    )  # fmt: skip
