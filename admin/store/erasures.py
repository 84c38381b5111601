"""Erased pictures (table ``erased_pictures``, schema 9): listed and lifted. An erasure is written by the capture
index (:meth:`admin.store.captures.CaptureStore.add_erased`), in the same transaction as its sweep of the stored
samples; every change bumps one counter in ``meta``, the key of the caches that uploads and the indexer check."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from admin.store.db import Database

CHANGES = "erased_pictures.changes"  # meta key: how many times the table changed (erasures and lifts)


@dataclass(frozen=True)
class ErasureRow:
    id: str  # the capture the erasure was asked on
    erased_at: str  # UTC, ISO 8601


def changed(conn: sqlite3.Connection) -> None:
    """(Inside the transaction that changed ``erased_pictures``.) Caches of the table are stale from its commit."""
    conn.execute("INSERT INTO meta (key, value) VALUES (?, '1') ON CONFLICT (key) DO UPDATE SET "
                 "value = CAST(value AS INTEGER) + 1", (CHANGES,))  # fmt: skip


class ErasureStore:
    def __init__(self, db: Database):
        self.db = db

    def list(self, limit: int, offset: int = 0) -> list[ErasureRow]:
        """The erasures in force, newest first: ids and dates only (never a hash: nothing of what the picture
        looks like leaves the database)."""
        rows = self.db.all("SELECT capture_id, erased_at FROM erased_pictures ORDER BY erased_at DESC, rowid DESC "
                           "LIMIT ? OFFSET ?", (limit, offset))  # fmt: skip
        return [ErasureRow(r["capture_id"], r["erased_at"]) for r in rows]

    def count(self) -> int:
        row = self.db.one("SELECT COUNT(*) AS n FROM erased_pictures")
        return int(row["n"]) if row is not None else 0

    def lift(self, capture_id: str) -> ErasureRow | None:
        """Forget the erasure asked on ``capture_id`` (its fingerprint goes); what it was, or None when there is
        none. Inside the caller's transaction when there is one (its audit entry commits with it)."""
        with self.db.tx() as conn:
            row = conn.execute("SELECT capture_id, erased_at FROM erased_pictures WHERE capture_id = ?",
                               (capture_id,)).fetchone()  # fmt: skip
            if row is None:
                return None
            conn.execute("DELETE FROM erased_pictures WHERE capture_id = ?", (capture_id,))
            changed(conn)
        return ErasureRow(row["capture_id"], row["erased_at"])
