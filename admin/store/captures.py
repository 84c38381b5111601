"""The index of captured served inputs in SQLite (the files themselves stay in the capture folder)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
import random
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal

from admin.store import capture_tallies, erasures
from admin.store.capture_tallies import BUCKET_S, LOW_MARGIN_KEY
from admin.store.db import Database
from admin.store.rows import Actor, CaptureRow, CaptureStatus
from graft.core.capture import CaptureRecord, valid_id
from graft.core.errors import UserInputError
from graft.core.util import utc_now

Strategy = Literal["margin", "entropy", "random"]
_UNDECIDED = "('queued', 'duplicate', 'unreadable')"  # statuses of captures no person decided on
_ORDER: dict[str, str] = {  # each walks an index (captures_queue, captures_entropy) and stops at the page
    "margin": "margin ASC, captured_at DESC, id DESC",  # smallest gap between the top two classes first
    "entropy": "entropy DESC, captured_at DESC, id DESC",  # the flattest distributions first
}
# A keyset cursor's condition: the rows after (key, captured_at, id) in _ORDER. Its first term is a range on the
# index's last column, so SQLite seeks to the cursor instead of reading and skipping the rows before it (OFFSET).
_AFTER: dict[str, str] = {
    "margin": "margin >= ? AND (margin > ? OR captured_at < ? OR (captured_at = ? AND id < ?))",
    "entropy": "entropy <= ? AND (entropy < ? OR captured_at < ? OR (captured_at = ? AND id < ?))",
}
_CURSOR_MAX = 200  # characters: a cursor is about 90


class BadCursorError(UserInputError):
    """A review cursor this service did not give, or gave for another order."""


def cursor_of(row: CaptureRow, strategy: Strategy) -> str:
    """An opaque cursor for the rows after ``row`` in ``strategy``'s order (``after`` of ``GET /v1/review``)."""
    key = row.margin if strategy == "margin" else row.entropy
    text = json.dumps([strategy, key, row.captured_at, row.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def parse_cursor(cursor: str, strategy: Strategy) -> tuple[float, float, str]:
    """(key, captured_at, id) of a cursor :func:`cursor_of` gave for ``strategy``; :class:`BadCursorError` if not."""
    how = "pass the `next` of the previous page unchanged, or start again without `after`"
    if strategy not in _AFTER:
        raise BadCursorError(f"strategy={strategy} has no order to continue: ask again for another random page")
    try:
        if len(cursor) > _CURSOR_MAX:
            raise ValueError("too long")
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        name, key, at, capture_id = value
        if name != strategy:
            raise BadCursorError(f"this cursor continues strategy={name}, not {strategy}: {how}")
        if not (isinstance(capture_id, str) and valid_id(capture_id)):
            raise ValueError("not a capture id")
        key, at = float(key), float(at)
        if not (math.isfinite(key) and math.isfinite(at)):
            raise ValueError("not finite")
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as e:
        raise BadCursorError(f"`after` is not a cursor GET /v1/review gave ({e}): {how}") from None
    return key, at, capture_id


class CaptureStore:
    def __init__(self, db: Database):
        self.db = db

    # ------------------------------------------------------------------ indexing
    def batch(self) -> AbstractContextManager[object]:
        """The index's writes of one pass, committed together."""
        return self.db.tx()

    def read_to(self, model_name: str) -> dict[str, int]:
        """How far each segment has been read: {segment name: offset}."""
        rows = self.db.all("SELECT name, read_to FROM capture_segments WHERE model_name = ?", (model_name,))
        return {r["name"]: int(r["read_to"]) for r in rows}

    def set_read_to(self, model_name: str, segment: str, offset: int) -> None:
        self.db.execute(
            "INSERT INTO capture_segments (model_name, name, read_to) VALUES (?, ?, ?)"
            " ON CONFLICT (model_name, name) DO UPDATE SET read_to = excluded.read_to", (model_name, segment, offset),
        )  # fmt: skip

    def forget_segments(self, model_name: str, names: Sequence[str]) -> None:
        with self.db.tx() as conn:
            conn.executemany("DELETE FROM capture_segments WHERE model_name = ? AND name = ?",
                             [(model_name, n) for n in names])  # fmt: skip

    def add(
        self,
        record: CaptureRecord,
        where: tuple[str, int, int],
        status: CaptureStatus,
        pixels_sha: str | None = None,
        phash: str | None = None,
        duplicate_of: str | None = None,
    ) -> None:
        """``where``: the segment, the capture's offset in it and its length."""
        segment, offset, length = where
        self.db.execute(
            "INSERT OR IGNORE INTO captures (id, model_name, model_version, captured_at, request_id, image_file,"
            " file_offset, file_length, predicted, labels, scores, margin, entropy, pixels_sha, phash, status,"
            " duplicate_of, indexed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.id, record.model_name, record.model_version, record.captured_at, record.request_id,
             segment, offset, length, record.predicted, json.dumps(record.labels), json.dumps(record.scores),
             record.margin, record.entropy, pixels_sha, phash, status, duplicate_of, utc_now()),
        )  # fmt: skip

    def seen_again(self, capture_id: str) -> None:
        self.db.execute("UPDATE captures SET seen = seen + 1 WHERE id = ?", (capture_id,))

    def replace(self, old_id: str, new_id: str) -> None:
        """``new_id`` takes over from ``old_id`` as its picture's queued entry (and its count)."""
        with self.db.tx() as conn:
            conn.execute("UPDATE captures SET seen = seen + (SELECT seen FROM captures WHERE id = ?) WHERE id = ?",
                         (old_id, new_id))  # fmt: skip
            conn.execute("UPDATE captures SET status = 'duplicate', duplicate_of = ? WHERE id = ?", (new_id, old_id))
            conn.execute("UPDATE captures SET duplicate_of = ? WHERE duplicate_of = ?", (new_id, old_id))

    def by_pixels(self, model_name: str, pixels_sha: str) -> str | None:
        """A capture of the same pixels that is its own entry (not itself a duplicate)."""
        row = self.db.one(
            "SELECT id FROM captures WHERE model_name = ? AND pixels_sha = ? AND status NOT IN "
            "('duplicate', 'deleted', 'gone', 'unreadable') ORDER BY id LIMIT 1", (model_name, pixels_sha),
        )  # fmt: skip
        return None if row is None else str(row["id"])

    def phashes(self, model_name: str) -> list[tuple[str, int]]:
        """(id, perceptual hash) of every capture a new one could be a near-duplicate of."""
        rows = self.db.all(
            "SELECT id, phash FROM captures WHERE model_name = ? AND phash IS NOT NULL AND status NOT IN "
            "('duplicate', 'deleted', 'gone', 'unreadable')", (model_name,),
        )  # fmt: skip
        return [(r["id"], int(r["phash"], 16)) for r in rows]

    def segments(self, model_name: str) -> list[str]:
        """The segment files the kept captures are in (a walk of the captures_segment index: once per start)."""
        rows = self.db.all("SELECT DISTINCT image_file FROM captures WHERE model_name = ? AND status NOT IN "
                           "('deleted', 'gone')", (model_name,))  # fmt: skip
        return [str(r["image_file"]) for r in rows]

    def prune_segments(self, model_name: str, segments: Sequence[str], keep_since: float | None = None) -> int:
        """The workers pruned these segment files: what :meth:`drop_pruned` does to their captures, found through
        the captures_segment index (never a scan of the table), and the segments' read offsets forgotten.
        How many captures were pruned."""
        since = keep_since if keep_since is not None else float("inf")
        pruned = 0
        with self.db.tx() as conn:
            for name in segments:
                where = "model_name = ? AND image_file = ?"
                pruned += conn.execute(f"SELECT COUNT(*) FROM captures WHERE {where} AND status NOT IN "
                                       "('deleted', 'gone')", (model_name, name)).fetchone()[0]  # fmt: skip
                conn.execute(f"DELETE FROM captures WHERE {where} AND status IN {_UNDECIDED} AND captured_at < ?",
                             (model_name, name, since))  # fmt: skip
                conn.execute(f"UPDATE captures SET status = 'gone' WHERE {where} AND status NOT IN ('deleted', 'gone')",
                             (model_name, name))  # fmt: skip
                conn.execute("DELETE FROM capture_segments WHERE model_name = ? AND name = ?", (model_name, name))
        return int(pruned)

    def fingerprints(self) -> list[tuple[str, str | None, str | None]]:
        """(id, pixels sha, perceptual hash) of every capture whose image may still be kept, any model."""
        rows = self.db.all("SELECT id, pixels_sha, phash FROM captures WHERE status NOT IN ('deleted', 'gone')")
        return [(r["id"], r["pixels_sha"], r["phash"]) for r in rows]

    def mark_deleted(self, ids: Sequence[str], erased_of: str) -> None:
        """The captures' images were erased as copies of capture ``erased_of``'s picture."""
        with self.db.tx() as conn:
            conn.executemany("UPDATE captures SET status = 'deleted', duplicate_of = ? WHERE id = ?",
                             [(f"erased:{erased_of}", i) for i in ids])  # fmt: skip

    def add_erased(self, capture_id: str, pixels_sha: str | None, phash: str | None) -> None:
        with self.db.tx() as conn:
            conn.execute("INSERT OR REPLACE INTO erased_pictures (capture_id, pixels_sha, phash, erased_at) "
                         "VALUES (?, ?, ?, ?)", (capture_id, pixels_sha, phash, utc_now()))  # fmt: skip
            erasures.changed(conn)

    def erased(self) -> list[tuple[str, str | None, str | None]]:
        """(capture id, pixels sha, perceptual hash) of every erased picture."""
        rows = self.db.all("SELECT capture_id, pixels_sha, phash FROM erased_pictures ORDER BY erased_at")
        return [(r["capture_id"], r["pixels_sha"], r["phash"]) for r in rows]

    def erased_key(self) -> tuple[int, int, int]:
        """(count, highest rowid, changes) of the erased pictures: changes with every erasure and every lifted one
        (a cache's key; the count of changes alone would do, the rest covers databases from before it was kept)."""
        row = self.db.one("SELECT COUNT(*) AS n, COALESCE(MAX(rowid), 0) AS top, (SELECT CAST(value AS INTEGER) "
                          f"FROM meta WHERE key = '{erasures.CHANGES}') AS changes FROM erased_pictures")  # fmt: skip
        return (int(row["n"]), int(row["top"]), int(row["changes"] or 0)) if row is not None else (0, 0, 0)

    def erased_at(self, capture_id: str) -> str | None:
        """When the erasure asked on ``capture_id`` was made (UTC, ISO 8601); None when there is none."""
        row = self.db.one("SELECT erased_at FROM erased_pictures WHERE capture_id = ?", (capture_id,))
        return str(row["erased_at"]) if row is not None else None

    def drop_pruned(self, ids: Sequence[str], keep_since: float | None = None) -> None:
        """Captures whose segment the workers pruned: the rows nobody decided on go (the disk budget bounds the
        index as it bounds the files), the decided ones stay, marked gone, for the history of the decision.
        Rows captured at or after ``keep_since`` stay too, marked gone: the drift window still counts what
        the model answered them (:meth:`forget_gone` drops them once they leave it)."""
        params = [(i, keep_since if keep_since is not None else float("inf")) for i in ids]
        with self.db.tx() as conn:
            conn.executemany(f"DELETE FROM captures WHERE id = ? AND status IN {_UNDECIDED} AND captured_at < ?",
                             params)  # fmt: skip
            conn.executemany("UPDATE captures SET status = 'gone' WHERE id = ?", [(i,) for i in ids])

    def forget_gone(self, before: float) -> int:
        """Pruned captures nobody decided on that have left the drift window: their rows go."""
        return self.db.execute(
            "DELETE FROM captures WHERE status = 'gone' AND reviewed_at IS NULL AND captured_at < ?", (before,)
        )

    def cap(self, keep: int) -> int:
        """Keep the rows of the newest ``keep`` captures nobody decided on (every model together): whatever the
        files hold (a million tiny images fit a budget), the index stays bounded. How many rows went. The count
        comes from the tallies and the oldest rows from the primary key: no scan when under the cap."""
        statuses = f"{_UNDECIDED[:-1]}, 'gone')"
        row = self.db.one(f"SELECT COALESCE(SUM(present), 0) AS n FROM capture_counts WHERE status IN {statuses}")
        excess = (0 if row is None else int(row["n"])) - keep
        if excess <= 0:
            return 0
        return self.db.execute(
            f"DELETE FROM captures WHERE id IN (SELECT id FROM captures WHERE status IN {statuses} "
            "ORDER BY id LIMIT ?)", (excess,),
        )

    def rows(self) -> int:
        """Rows in the index (from the tallies: counting the table would read all of it)."""
        row = self.db.one("SELECT COALESCE(SUM(present), 0) AS n FROM capture_counts")
        return 0 if row is None else int(row["n"])

    # ------------------------------------------------------------------ review
    def get(self, capture_id: str) -> CaptureRow | None:
        row = self.db.one("SELECT * FROM captures WHERE id = ?", (capture_id,))
        return None if row is None else _row(row)

    def review(self, model_name: str, strategy: Strategy, limit: int, status: CaptureStatus = "queued",
               offset: int = 0, after: str | None = None) -> list[CaptureRow]:  # fmt: skip
        """A page of ``status`` captures in ``strategy``'s order: ``offset`` rows in (each one skipped is read), or
        after the row ``after`` names (a cursor from :func:`cursor_of`: a seek, whatever the depth, and rows
        arriving meanwhile neither repeat nor hide the ones after it)."""
        if after is not None:
            key, at, capture_id = parse_cursor(after, strategy)
            if offset:
                raise BadCursorError("send either `offset` or `after`, not both: `after` already says where to start")
            rows = self.db.all(
                f"SELECT * FROM captures WHERE model_name = ? AND status = ? AND {_AFTER[strategy]} "
                f"ORDER BY {_ORDER[strategy]} LIMIT ?", (model_name, status, key, key, at, at, capture_id, limit),
            )  # fmt: skip
            return [_row(r) for r in rows]
        if strategy == "random":
            return self._random(model_name, limit, status)
        rows = self.db.all(
            f"SELECT * FROM captures WHERE model_name = ? AND status = ? ORDER BY {_ORDER[strategy]} LIMIT ? OFFSET ?",
            (model_name, status, limit, offset),
        )
        return [_row(r) for r in rows]

    def _random(self, model_name: str, limit: int, status: CaptureStatus) -> list[CaptureRow]:
        """Up to ``limit`` items at random: each the first of ``status`` from a random rowid on (ORDER BY random()
        would read and sort every row of the model)."""
        top = self.db.one("SELECT COALESCE(MAX(rowid), 0) AS n FROM captures")
        span = 0 if top is None else int(top["n"])
        found: dict[str, CaptureRow] = {}
        for start in random.sample(range(1, span + 1), min(span, 3 * limit)):
            if len(found) >= limit:
                break
            row = self.db.one("SELECT * FROM captures WHERE rowid >= ? AND +model_name = ? AND +status = ? "
                              "ORDER BY rowid LIMIT 1", (start, model_name, status))  # fmt: skip
            if row is not None:
                found.setdefault(row["id"], _row(row))
        return list(found.values())

    def set_status(self, capture_id: str, status: CaptureStatus, **fields: Any) -> None:
        # Microseconds: "undo the last decisions" orders by this, and a labeller decides several times a second.
        fields = {"status": status, "reviewed_at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"), **fields}
        assignments = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE captures SET {assignments} WHERE id = ?", (*fields.values(), capture_id))

    def last_decided(self, reviewed_by: Actor | None, limit: int) -> list[CaptureRow]:
        """The latest label, skip and reject decisions (of one token's role, or anyone's), newest first."""
        where, params = "status IN ('labelled', 'skipped', 'rejected')", []
        if reviewed_by is not None:
            where, params = where + " AND reviewed_by = ?", [reviewed_by]
        rows = self.db.all(f"SELECT * FROM captures WHERE {where} ORDER BY reviewed_at DESC, id DESC LIMIT ?",
                           (*params, limit))  # fmt: skip
        return [_row(r) for r in rows]

    def reopen(self, capture_id: str) -> None:
        """Back in the queue, as if nobody had decided."""
        self.db.execute("UPDATE captures SET status = 'queued', label = NULL, sample_id = NULL, reviewed_at = NULL, "
                        "reviewed_by = NULL, created_sample = 0 WHERE id = ?", (capture_id,))  # fmt: skip

    def labelled_as(self, sample_id: str) -> list[str]:
        """Captures whose label decision is this sample."""
        rows = self.db.all("SELECT id FROM captures WHERE status = 'labelled' AND sample_id = ? ORDER BY id",
                           (sample_id,))  # fmt: skip
        return [str(r["id"]) for r in rows]

    def release_sample(self, sample_id: str) -> list[str]:
        """The sample is gone: its captures return to the queue (their ids), and captures filed as its
        near-duplicates follow the first of them, so the queue still shows each picture once."""
        with self.db.tx() as conn:
            reopened = self.labelled_as(sample_id)
            for cid in reopened:
                self.reopen(cid)
            dups = conn.execute("SELECT id, model_name FROM captures WHERE duplicate_of = ? ORDER BY id",
                                (f"sample:{sample_id}",)).fetchall()  # fmt: skip
            heads = {r["model_name"]: r["id"] for r in conn.execute(
                "SELECT id, model_name FROM captures WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id DESC",
                (json.dumps(reopened),))}  # fmt: skip
            for d in dups:
                head = heads.setdefault(d["model_name"], d["id"])  # none reopened: the oldest duplicate leads
                if head == d["id"]:
                    conn.execute("UPDATE captures SET status = 'queued', duplicate_of = NULL WHERE id = ?", (head,))
                else:
                    conn.execute("UPDATE captures SET duplicate_of = ? WHERE id = ?", (head, d["id"]))
                    conn.execute("UPDATE captures SET seen = seen + 1 WHERE id = ?", (head,))
        return reopened

    def relabel_sample(self, sample_id: str, label: str) -> None:
        self.db.execute("UPDATE captures SET label = ? WHERE sample_id = ?", (label, sample_id))

    def move_label(self, old: str, new: str) -> None:
        self.db.execute("UPDATE captures SET label = ? WHERE label = ?", (new, old))

    def counts(self, model_name: str) -> dict[str, dict[str, int]]:
        """{predicted label: {status: n}} of the rows, from the tallies (never a count over the table)."""
        out: dict[str, dict[str, int]] = {}
        rows = self.db.all("SELECT predicted, status, present AS n FROM capture_counts WHERE model_name = ? "
                           "AND present > 0", (model_name,))  # fmt: skip
        for r in rows:
            out.setdefault(r["predicted"], {})[r["status"]] = int(r["n"])
        return out

    # ------------------------------------------------------------------ replay and drift
    def recent(self, model_name: str, limit: int, version: str | None = None) -> list[CaptureRow]:
        """The latest captures whose image should still be on disk, newest first."""
        where, params = "model_name = ? AND status NOT IN ('deleted', 'gone', 'unreadable')", [model_name]
        if version is not None:
            where, params = where + " AND model_version = ?", [*params, version]
        rows = self.db.all(f"SELECT * FROM captures WHERE {where} ORDER BY id DESC LIMIT ?", (*params, limit))
        return [_row(r) for r in rows]

    def answers(self, model_name: str, version: str, start: float, end: float) -> list[tuple[str, float, float]]:
        """(predicted, top-1 score, margin) of every capture of ``version`` in ``[start, end)`` whose row is kept."""
        rows = self.db.all(
            "SELECT predicted, scores, margin FROM captures WHERE model_name = ? AND model_version = ? "
            "AND captured_at >= ? AND captured_at < ?", (model_name, version, start, end),
        )  # fmt: skip
        return [(r["predicted"], float(json.loads(r["scores"])[0]), float(r["margin"])) for r in rows]

    def window(self, model_name: str, version: str, start: float, end: float) -> tuple[
        dict[str, tuple[int, float, int]], list[tuple[str, float, float]]
    ]:  # fmt: skip
        """What ``version`` answered in ``[start, end)``: the whole buckets inside it from the tallies,
        {predicted: (n, sum of top-1, n under low_margin)}, and the answers at its two ragged edges (less than
        :data:`BUCKET_S` seconds each) from the rows."""
        first, last = math.ceil(start / BUCKET_S) * BUCKET_S, math.floor(end / BUCKET_S) * BUCKET_S
        if first >= last:  # shorter than a bucket
            return {}, self.answers(model_name, version, start, end)
        rows = self.db.all(
            "SELECT predicted, SUM(n) AS n, SUM(top1) AS top1, SUM(low) AS low FROM capture_windows "
            "WHERE model_name = ? AND model_version = ? AND bucket >= ? AND bucket < ? GROUP BY predicted",
            (model_name, version, first, last),
        )  # fmt: skip
        whole = {r["predicted"]: (int(r["n"]), float(r["top1"]), int(r["low"])) for r in rows}
        edges = self.answers(model_name, version, start, first) + self.answers(model_name, version, last, end)
        return whole, edges

    def window_margin(self) -> float | None:
        """The low_margin the drift tallies count with."""
        value = self.db.get_meta(LOW_MARGIN_KEY)
        return None if value is None else float(value)

    def rebuild_windows(self, low_margin: float) -> None:
        with self.db.tx() as conn:
            capture_tallies.rebuild_windows(conn, low_margin)

    def forget_windows(self, before: float) -> int:
        """Drift tallies older than ``before`` go (the history a drift report can ask for is bounded)."""
        edge = math.floor(before / BUCKET_S) * BUCKET_S
        return self.db.execute("DELETE FROM capture_windows WHERE bucket < ?", (edge,))


def _row(row: Any) -> CaptureRow:
    values = dict(row)
    values["labels"], values["scores"] = json.loads(values["labels"]), json.loads(values["scores"])
    values.pop("indexed_at", None)
    return CaptureRow(**values)
