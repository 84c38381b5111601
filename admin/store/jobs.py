"""Retraining jobs in SQLite: one row per job, every transition written before it is acted on."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from admin.store.db import Database, dumps, loads
from admin.store.rows import Job
from graft.core.errors import ConflictError
from graft.core.util import utc_now

_JSON_FIELDS = ("params", "config", "candidate_metrics", "champion_metrics", "gate", "replay", "data_check")


class JobStore:
    def __init__(self, db: Database):
        self.db = db

    def create(
        self, job_id: str, trigger: str, params: dict[str, Any], job_dir: Path, candidate: Callable[[], str]
    ) -> str:
        """Insert a queued job; ``candidate()`` (run in the same transaction) reserves its model version.

        :class:`ConflictError` while another job is queued or running: the database enforces one at a time.
        """
        try:
            with self.db.tx() as conn:
                version = candidate()
                conn.execute(
                    "INSERT INTO jobs (id, status, phase, trigger, params, candidate_version, job_dir, created_at)"
                    " VALUES (?, 'queued', 'queued', ?, ?, ?, ?, ?)",
                    (job_id, trigger, dumps(params), version, str(job_dir), utc_now()),
                )
        except sqlite3.IntegrityError as e:
            active = self.active_id()
            raise ConflictError(
                f"job {active or '?'} is still running: one job at a time (GET /v1/jobs/ID)"
            ) from e
        return version

    def get(self, job_id: str) -> Job | None:
        row = self.db.one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else _job(row)

    def recent(self, limit: int = 50) -> list[Job]:
        rows = self.db.all("SELECT * FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,))
        return [_job(r) for r in rows]

    def active_id(self) -> str | None:
        row = self.db.one("SELECT id FROM jobs WHERE status IN ('queued', 'running')")
        return None if row is None else str(row["id"])

    def unfinished(self) -> list[Job]:
        return [_job(r) for r in self.db.all("SELECT * FROM jobs WHERE status IN ('queued', 'running')")]

    def update(self, job_id: str, **fields: Any) -> None:
        cols = {k: dumps(v) if k in _JSON_FIELDS and v is not None else v for k, v in fields.items()}
        cols = {k: str(v) if isinstance(v, Path) else v for k, v in cols.items()}
        assignments = ", ".join(f"{k} = ?" for k in cols)
        self.db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*cols.values(), job_id])

    def checks_since(self, at: str, exclude: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """(job id, data check) of the jobs started at or after ``at`` that ran the data check, oldest first;
        ``exclude``: a job to leave out (the one that made the champion)."""
        rows = self.db.all("SELECT id, data_check FROM jobs WHERE created_at >= ? AND data_check IS NOT NULL "
                           "AND id != ? ORDER BY created_at, rowid", (at, exclude or ""))  # fmt: skip
        return [(str(r["id"]), loads(r["data_check"], {})) for r in rows]

    def last_snapshot_seq(self) -> int:
        """The newest sample any job has snapshotted (0 before the first job)."""
        row = self.db.one("SELECT COALESCE(MAX(max_sample_seq), 0) AS m FROM jobs")
        return int(row["m"]) if row else 0


def _job(row: sqlite3.Row) -> Job:
    out = dict(row)
    for k in _JSON_FIELDS:
        out[k] = loads(out[k], {} if k == "params" else None)
    out["promoted"] = bool(out["promoted"])
    return Job(**out)
