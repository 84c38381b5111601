"""The admin-owned label set in SQLite (see admin/domain/labels.py for the rules)."""

from __future__ import annotations

from typing import Literal

from admin.store.db import Database
from admin.store.rows import Label
from graft.core.util import utc_now


class LabelStore:
    def __init__(self, db: Database):
        self.db = db

    def get(self, key: str) -> Label | None:
        row = self.db.one("SELECT * FROM labels WHERE key = ?", (key,))
        return None if row is None else Label(**dict(row))

    def all(self) -> list[Label]:
        """In key order: the order labels joined the set (the review page's keys 1-9 follow it)."""
        return [Label(**dict(r)) for r in self.db.all("SELECT * FROM labels ORDER BY position, name")]

    def add(self, key: str, name: str, source: Literal["model", "admin"]) -> Label:
        """Insert unless the key is there already; the label as stored either way."""
        label, _ = self.insert(key, name, source)
        return label

    def insert(self, key: str, name: str, source: Literal["model", "admin"]) -> tuple[Label, bool]:
        """:meth:`add`, and whether this call added it. A new label goes last: no other label's key moves."""
        with self.db.tx() as conn:
            added = conn.execute(
                "INSERT OR IGNORE INTO labels (key, name, source, created_at, position) VALUES (?, ?, ?, ?, "
                "(SELECT COALESCE(MAX(position), 0) + 1 FROM labels))", (key, name, source, utc_now()),
            ).rowcount == 1  # fmt: skip
        label = self.get(key)
        assert label is not None
        return label, added

    def rename(self, key: str, new_key: str, new_name: str) -> None:
        """The same label (same position, same source) under another spelling."""
        self.db.execute("UPDATE labels SET key = ?, name = ? WHERE key = ?", (new_key, new_name, key))

    def remove(self, key: str) -> bool:
        return self.db.execute("DELETE FROM labels WHERE key = ?", (key,)) == 1

    def sample_count(self, name: str) -> int:
        row = self.db.one("SELECT COUNT(*) AS n FROM samples WHERE label = ?", (name,))
        return int(row["n"]) if row else 0
