"""The audit trail in SQLite: one row per change to the data (samples, labels, review decisions).

Rows are only ever appended. A correction writes its row inside the same transaction as the change itself
(:meth:`admin.store.db.Database.tx` nests), so the trail and the data cannot disagree.
"""

from __future__ import annotations

from typing import Any

from admin.store.db import Database, dumps, loads
from admin.store.rows import Actor, AuditEntry
from graft.core.util import utc_now


class AuditStore:
    def __init__(self, db: Database):
        self.db = db

    def record(self, actor: Actor, action: str, target: str, **detail: Any) -> int:
        """Append one entry; its id."""
        with self.db.tx() as conn:
            cur = conn.execute("INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                               (utc_now(), actor, action, target, dumps(detail)))  # fmt: skip
            return int(cur.lastrowid or 0)

    def count_since(self, at: str, actions: tuple[str, ...]) -> int:
        """How many entries of ``actions`` were recorded at or after the time ``at`` (ISO 8601, as ``utc_now``).
        Times are to the second: an entry in the same second as ``at`` may be before or after it, and counts (the
        safe side for "has anything changed since")."""
        marks = ", ".join("?" for _ in actions)
        row = self.db.one(f"SELECT COUNT(*) AS n FROM audit WHERE at >= ? AND action IN ({marks})", (at, *actions))
        return int(row["n"]) if row else 0

    def targets_since(self, at: str, action: str, actor: Actor) -> list[str]:
        """The targets of ``action`` by ``actor`` at or after ``at`` (to the second, as :meth:`count_since`)."""
        rows = self.db.all("SELECT DISTINCT target FROM audit WHERE at >= ? AND action = ? AND actor = ?",
                           (at, action, actor))  # fmt: skip
        return [str(r["target"]) for r in rows]

    def confirmed_since(self, at: str) -> dict[str, str]:
        """Sample id -> the label an admin last confirmed it with, at or after ``at`` (``sample.confirm``)."""
        rows = self.db.all("SELECT target, detail FROM audit WHERE at >= ? AND action = 'sample.confirm' AND "
                           "actor != 'samples' ORDER BY id", (at,))  # fmt: skip
        return {str(r["target"]): str(loads(r["detail"], {}).get("label")) for r in rows}

    def entries(self, limit: int = 100, before: int | None = None, action: str | None = None,
                target: str | None = None) -> list[AuditEntry]:  # fmt: skip
        """Newest first; ``before`` pages back (the smallest id of the previous page); ``action`` may end in
        ``.*`` for a family (``label.*``)."""
        where, params = "1 = 1", list[Any]()
        if before is not None:
            where, params = where + " AND id < ?", [*params, before]
        if action is not None and action.endswith(".*"):
            where, params = where + " AND action LIKE ?", [*params, action[:-1] + "%"]
        elif action is not None:
            where, params = where + " AND action = ?", [*params, action]
        if target is not None:
            where, params = where + " AND target = ?", [*params, target]
        rows = self.db.all(f"SELECT * FROM audit WHERE {where} ORDER BY id DESC LIMIT ?", (*params, limit))
        return [AuditEntry(**{**dict(r), "detail": loads(r["detail"], {})}) for r in rows]
