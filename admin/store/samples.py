"""Labelled samples on disk and in SQLite: content-addressed files written atomically, one row each.

A sample's id is the sha256 of its bytes and its file lives at ``samples/ab/<sha256>.<ext>``; its row also
holds what it looks like (the sha256 of its decoded pixels, a perceptual hash). The caller
(admin/domain/samples.py) decides label and split; this module only stores, and refuses the same image
(the same bytes, or the same pixels) under a second label. A batch is stored in one transaction.

Corrections (admin/domain/corrections.py) delete rows and change labels; a deleted sample's file goes to the
``trash`` table and is removed by :meth:`SampleStore.sweep_trash` only once no job is active, because a running
job's snapshot is a list of these files.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from admin.store.db import Database
from admin.store.rows import Actor, SampleMeta, SampleRef, SampleSplit, StoredSample
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
    pixels_sha: str  # of the decoded pixels: what makes two files one image
    phash: str  # perceptual hash, hex
    split_reason: str = "hash split"  # or "balanced split", "near-duplicate of <id>"
    uploader: Actor | None = None  # the token that sent it: the samples token may correct its own samples only


def content_address(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Existing:
    id: str
    label: str
    split: SampleSplit
    seq: int
    split_reason: str = ""


class SampleStore:
    """Samples on disk (content-addressed) and in SQLite (label, split, arrival order, fingerprints)."""

    def __init__(self, db: Database, root: Path):
        self.db = db
        self.root = Path(root)

    def by_bytes(self, sha: str) -> Existing | None:
        return self._one("sha256 = ?", sha)

    def by_pixels(self, pixels_sha: str) -> Existing | None:
        return self._one("pixels_sha = ?", pixels_sha)

    def _one(self, where: str, value: str) -> Existing | None:
        row = self.db.one(f"SELECT sha256, label, split, seq, split_reason FROM samples WHERE {where} ORDER BY seq "
                          "LIMIT 1", (value,))  # fmt: skip
        if row is None:
            return None
        return Existing(row["sha256"], row["label"], row["split"], int(row["seq"]), row["split_reason"] or "")

    def files_since(self, split: SampleSplit, seq: int) -> list[tuple[int, str, Path]]:
        """(seq, id, file) of every sample of ``split`` stored after ``seq``, in arrival order (index samples_split)."""
        rows = self.db.all("SELECT seq, sha256, path FROM samples WHERE split = ? AND seq > ? ORDER BY seq",
                           (split, seq))  # fmt: skip
        return [(int(r["seq"]), r["sha256"], self.root / r["path"]) for r in rows]

    def phashes(self) -> list[tuple[str, int]]:
        """(id, perceptual hash) of every fingerprinted sample."""
        rows = self.db.all("SELECT sha256, phash FROM samples WHERE phash IS NOT NULL")
        return [(r["sha256"], int(r["phash"], 16)) for r in rows]

    def add(self, sample: NewSample) -> StoredSample:
        return self.add_many([sample])[0]

    def add_many(self, samples: Sequence[NewSample],
                 guard: Callable[[int, NewSample], None] = lambda i, s: None) -> list[StoredSample]:  # fmt: skip
        """Store every sample or none: a conflict anywhere (with a stored sample or within the batch) stores nothing.

        Files first, rows second, in one transaction: a crash in between leaves orphan files, never a row
        without its file. The same image again (same bytes, or same pixels) under the same label is a
        duplicate: recognised, not stored twice. ``guard(i, sample)`` runs inside the transaction, before each
        row is written, and refuses by raising (the intake re-checks erased pictures there, serialised with the
        erasure's own write): then nothing is stored, and the files this call wrote are removed again.
        """
        first_label: dict[str, str] = {}
        for s in samples:
            if first_label.setdefault(s.pixels_sha, s.label) != s.label:
                raise ConflictError(
                    f"the same image appears twice in this request, as {first_label[s.pixels_sha]!r} and {s.label!r}"
                )
        for s in samples:
            self._check_label(s)  # refuse before writing any file
        paths: dict[str, Path] = {}
        written: dict[str, Path] = {}
        for s in samples:
            rel = Path("samples") / s.sha256[:2] / f"{s.sha256}.{s.header.extension}"
            if s.sha256 not in paths and not (self.root / rel).is_file():
                write_atomic(self.root / rel, s.data, mode=0o600)
                written[s.sha256] = rel
            paths[s.sha256] = rel
        try:
            with self.db.tx() as conn:
                out = []
                for i, s in enumerate(samples):
                    guard(i, s)
                    out.append(self._insert(conn, s, paths[s.sha256]))
                return out
        except BaseException:
            with contextlib.suppress(OSError, sqlite3.Error):  # the refusal is the error to report, not this
                self._unwrite(written)
            raise

    def _unwrite(self, written: dict[str, Path]) -> None:
        """Files a refused batch wrote, unless a row names their bytes: under the database's lock, so no other
        request stores the same bytes in between (its insert writes the file again when it is missing)."""
        with self.db.tx() as conn:
            for sha, rel in written.items():
                if conn.execute("SELECT 1 FROM samples WHERE sha256 = ?", (sha,)).fetchone() is None:
                    (self.root / rel).unlink(missing_ok=True)

    def _insert(self, conn: Any, s: NewSample, rel: Path) -> StoredSample:
        # Stored before, earlier in this batch, or raced in from another request: the first row wins.
        row = conn.execute("SELECT sha256, seq, label, split, split_reason FROM samples WHERE sha256 = ? OR "
                           "pixels_sha = ? ORDER BY seq LIMIT 1", (s.sha256, s.pixels_sha)).fetchone()  # fmt: skip
        if row is not None:
            if row["label"] != s.label:
                raise ConflictError(conflict_message(row["sha256"], row["label"], s.label))
            return StoredSample(id=row["sha256"], label=s.label, split=row["split"], duplicate=True, seq=row["seq"],
                                split_reason=row["split_reason"] or "")  # fmt: skip
        cur = conn.execute(
            "INSERT INTO samples (sha256, label, split, path, size, format, width, height, received_at, pixels_sha,"
            " phash, split_reason, uploader) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (s.sha256, s.label, s.split, str(rel), len(s.data), s.header.format, s.header.width, s.header.height,
             utc_now(), s.pixels_sha, s.phash, s.split_reason, s.uploader),
        )  # fmt: skip
        if not (self.root / rel).is_file():  # the same bytes were deleted, and the trash swept, since we looked
            write_atomic(self.root / rel, s.data, mode=0o600)
        return StoredSample(id=s.sha256, label=s.label, split=s.split, duplicate=False, seq=int(cur.lastrowid or 0),
                            split_reason=s.split_reason)  # fmt: skip

    def _check_label(self, s: NewSample) -> None:
        existing = self.by_bytes(s.sha256) or self.by_pixels(s.pixels_sha)
        if existing is not None and existing.label != s.label:
            raise ConflictError(conflict_message(existing.id, existing.label, s.label))

    def backfill_fingerprints(self, fingerprint: Callable[[bytes], tuple[str, str]]) -> int:
        """Rows stored before fingerprints existed get them (``fingerprint(bytes) -> (pixels_sha, phash)``)."""
        rows = self.db.all("SELECT sha256, path FROM samples WHERE pixels_sha IS NULL OR phash IS NULL")
        for r in rows:
            try:
                pixels, phash = fingerprint((self.root / r["path"]).read_bytes())
            except (OSError, ValueError):
                continue
            self.db.execute("UPDATE samples SET pixels_sha = ?, phash = ? WHERE sha256 = ?",
                            (pixels, phash, r["sha256"]))  # fmt: skip
        return len(rows)

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
        """``{label: {"train": n, "holdout": m}}`` for every label with samples (kept by triggers:
        :mod:`admin.store.sample_tallies`, a few rows whatever the number of samples)."""
        out: dict[str, dict[str, int]] = {}
        for row in self.db.all("SELECT label, split, n FROM sample_counts WHERE n > 0"):
            out.setdefault(row["label"], {"train": 0, "holdout": 0})[row["split"]] = int(row["n"])
        return out

    def counts_of(self, labels: Iterable[str]) -> dict[str, dict[str, int]]:
        """``counts()`` of these labels only, zeros included."""
        out: dict[str, dict[str, int]] = {}
        for label in labels:
            row = {"train": 0, "holdout": 0}
            for r in self.db.all("SELECT split, n FROM sample_counts WHERE label = ?", (label,)):
                row[r["split"]] = int(r["n"])
            out[label] = row
        return out

    def snapshot(self, up_to_seq: int) -> list[SampleRef]:
        """Every sample up to ``up_to_seq``, in arrival order, with its absolute path."""
        rows = self.db.all(
            "SELECT sha256, label, split, path, seq FROM samples WHERE seq <= ? ORDER BY seq", (up_to_seq,)
        )
        return [_ref(self.root, r) for r in rows]

    def between(self, after_seq: int, up_to_seq: int) -> list[SampleRef]:
        """The samples that arrived after ``after_seq``, up to ``up_to_seq``, in arrival order."""
        rows = self.db.all("SELECT sha256, label, split, path, seq FROM samples WHERE seq > ? AND seq <= ? "
                           "ORDER BY seq", (after_seq, up_to_seq))  # fmt: skip
        return [_ref(self.root, r) for r in rows]

    def refs(self, ids: Iterable[str], up_to_seq: int) -> list[SampleRef]:
        """These samples (those still stored, up to ``up_to_seq``), in arrival order."""
        wanted = sorted(set(ids))
        out: list[SampleRef] = []
        for start in range(0, len(wanted), 500):  # SQLite's host parameters, well within its limit
            chunk = wanted[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            out += [_ref(self.root, r) for r in self.db.all(
                f"SELECT sha256, label, split, path, seq FROM samples WHERE sha256 IN ({marks}) AND seq <= ?",
                (*chunk, up_to_seq))]  # fmt: skip
        return sorted(out, key=lambda s: s.seq)

    def recent(self, limit: int) -> list[SampleRef]:
        """The newest samples first."""
        rows = self.db.all("SELECT sha256, label, split, path, seq FROM samples ORDER BY seq DESC LIMIT ?", (limit,))
        return [_ref(self.root, r) for r in rows]

    def path_of(self, sample_id: str) -> Path | None:
        row = self.db.one("SELECT path FROM samples WHERE sha256 = ?", (sample_id,))
        return None if row is None else (self.root / row["path"]).resolve()

    def browse(self, label: str | None = None, uploader: Actor | None = None, limit: int = 50,
             offset: int = 0) -> list[SampleMeta]:  # fmt: skip
        """Newest first, optionally of one label or one uploader."""
        where, params = "1 = 1", list[Any]()
        if label is not None:
            where, params = where + " AND label = ?", [*params, label]
        if uploader is not None:
            where, params = where + " AND uploader = ?", [*params, uploader]
        rows = self.db.all(f"SELECT * FROM samples WHERE {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                           (*params, limit, offset))  # fmt: skip
        return [_meta(r) for r in rows]

    # ------------------------------------------------------------------ corrections
    def remove(self, sample_id: str) -> bool:
        """Delete the row; its file waits in the trash for :meth:`sweep_trash` (a running job may read it)."""
        with self.db.tx() as conn:
            row = conn.execute("SELECT path FROM samples WHERE sha256 = ?", (sample_id,)).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM samples WHERE sha256 = ?", (sample_id,))
            conn.execute("INSERT OR REPLACE INTO trash (path, sample_id, deleted_at) VALUES (?, ?, ?)",
                         (row["path"], sample_id, utc_now()))  # fmt: skip
        return True

    def remove_picture(self, pixels_sha: str | None, phash: str | None, max_bits: int) -> list[SampleMeta]:
        """Delete every sample of one picture (the same pixels, or a perceptual hash within ``max_bits``), as
        :meth:`remove` does: the rows now, the files through the trash. What was deleted."""
        target = int(phash, 16) if phash is not None else None
        with self.db.tx() as conn:
            rows = conn.execute("SELECT * FROM samples WHERE pixels_sha = ? OR phash IS NOT NULL",
                                (pixels_sha,)).fetchall()  # fmt: skip
            same = [r for r in rows if (pixels_sha is not None and r["pixels_sha"] == pixels_sha)
                    or (target is not None and r["phash"] is not None
                        and (int(r["phash"], 16) ^ target).bit_count() <= max_bits)]  # fmt: skip
            for r in same:
                conn.execute("DELETE FROM samples WHERE sha256 = ?", (r["sha256"],))
                conn.execute("INSERT OR REPLACE INTO trash (path, sample_id, deleted_at) VALUES (?, ?, ?)",
                             (r["path"], r["sha256"], utc_now()))  # fmt: skip
        return [_meta(r) for r in same]

    def set_label(self, sample_id: str, label: str) -> bool:
        """False when the sample is gone (deleted meanwhile)."""
        return self.db.execute("UPDATE samples SET label = ? WHERE sha256 = ?", (label, sample_id)) == 1

    def move_label(self, old: str, new: str) -> int:
        """Every sample of ``old`` is ``new`` from now on; how many."""
        return self.db.execute("UPDATE samples SET label = ? WHERE label = ?", (new, old))

    def sweep_trash(self) -> tuple[list[Path], str | None]:
        """Remove the files of deleted samples, unless a job is active: (the files removed, resolved; the active
        job's id).

        Under the database's lock, so no job starts (and snapshots) meanwhile and no upload of the same bytes
        slips in between the check and the unlink; a file whose bytes were stored again since stays."""
        removed: list[Path] = []
        with self.db.tx() as conn:
            active = conn.execute("SELECT id FROM jobs WHERE status IN ('queued', 'running')").fetchone()
            if active is not None:
                return [], str(active["id"])
            for row in conn.execute("SELECT path, sample_id FROM trash").fetchall():
                if conn.execute("SELECT 1 FROM samples WHERE sha256 = ?", (row["sample_id"],)).fetchone() is None:
                    path = (self.root / row["path"]).resolve()
                    path.unlink(missing_ok=True)
                    removed.append(path)
                conn.execute("DELETE FROM trash WHERE path = ?", (row["path"],))
        return removed, None

    def trash_count(self) -> int:
        row = self.db.one("SELECT COUNT(*) AS n FROM trash")
        return int(row["n"]) if row else 0

    def missing_files(self) -> list[str]:
        """Ids of samples whose file is gone: should always be empty (the crash test checks it)."""
        rows = self.db.all("SELECT sha256, path FROM samples")
        return [r["sha256"] for r in rows if not (self.root / r["path"]).is_file()]


def conflict_message(sha: str, stored: str, asked: str) -> str:
    return (f"this image is already stored as sample {sha} with label {stored!r}, not {asked!r}; if {stored!r} is "
            f"wrong, relabel it first (PATCH /v1/samples/{sha} with {{\"label\": \"{asked}\"}})")  # fmt: skip


def _ref(root: Path, row: Any) -> SampleRef:
    return SampleRef(id=row["sha256"], label=row["label"], split=row["split"], path=(root / row["path"]).resolve(),
                     seq=row["seq"])  # fmt: skip


def _meta(row: Any) -> SampleMeta:
    return SampleMeta(
        id=row["sha256"], label=row["label"], split=row["split"], size=row["size"], format=row["format"],
        width=row["width"], height=row["height"], received_at=row["received_at"],
        split_reason=row["split_reason"] or "", uploader=row["uploader"],
    )  # fmt: skip
