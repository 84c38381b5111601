"""The admin's metadata store: one SQLite file (WAL) holding samples, jobs, models and deployments.

A single connection guarded by a lock serves the request threads and the job thread: the write rate
is a few rows a second at most, and one connection keeps transactions simple and serialised.
The image bytes live beside it as content-addressed files; SQLite only points at them.
Every SQL statement of the admin lives in this package (admin/store/).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order: "since the champion was trained"
    sha256      TEXT NOT NULL UNIQUE,               -- content address, and the public id
    label       TEXT NOT NULL,
    split       TEXT NOT NULL CHECK (split IN ('train', 'holdout')),
    path        TEXT NOT NULL,                      -- relative to the state folder
    size        INTEGER NOT NULL,
    format      TEXT NOT NULL,
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_label ON samples (label, split);

CREATE TABLE IF NOT EXISTS jobs (
    id                TEXT PRIMARY KEY,
    status            TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'rejected', 'failed')),
    phase             TEXT NOT NULL DEFAULT 'queued',
    progress          REAL NOT NULL DEFAULT 0,
    trigger           TEXT NOT NULL DEFAULT 'api',
    params            TEXT NOT NULL DEFAULT '{}',
    config            TEXT,                               -- the TrainConfig the job trains with
    candidate_version TEXT,
    champion_version  TEXT,
    candidate_metrics TEXT,
    champion_metrics  TEXT,
    gate              TEXT,
    promoted          INTEGER NOT NULL DEFAULT 0,
    reason            TEXT NOT NULL DEFAULT '',
    dataset_digest    TEXT,
    max_sample_seq    INTEGER,
    job_dir           TEXT,
    pid               INTEGER,
    created_at        TEXT NOT NULL,
    started_at        TEXT,
    finished_at       TEXT
);
-- One job at a time, enforced by the database itself and not only by a lock in one process.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_active
    ON jobs ((status IN ('queued', 'running'))) WHERE status IN ('queued', 'running');

CREATE TABLE IF NOT EXISTS models (
    version         TEXT PRIMARY KEY,
    status          TEXT NOT NULL CHECK (status IN ('training', 'failed', 'rejected', 'accepted')),
    source          TEXT NOT NULL,          -- 'job' or 'import'
    job_id          TEXT,
    parent_version  TEXT,
    run_dir         TEXT,
    mar_path        TEXT,
    labels          TEXT NOT NULL DEFAULT '[]',
    metrics         TEXT NOT NULL DEFAULT '{}',
    lineage         TEXT NOT NULL DEFAULT '{}',
    recipe          TEXT NOT NULL DEFAULT '{}',
    dataset_digest  TEXT,
    num_train       INTEGER NOT NULL DEFAULT 0,
    num_holdout     INTEGER NOT NULL DEFAULT 0,
    max_sample_seq  INTEGER NOT NULL DEFAULT 0,
    deployed        INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

-- What the service decided once and must keep across restarts: the model it manages, where its base data is.
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- The history of defaults. previous_seq links each entry to the one a rollback returns to, so that
-- successive rollbacks walk back through history instead of bouncing between two versions.
CREATE TABLE IF NOT EXISTS deployments (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    version      TEXT NOT NULL REFERENCES models (version),
    action       TEXT NOT NULL CHECK (action IN ('import', 'promote', 'rollback')),
    previous_seq INTEGER REFERENCES deployments (seq),
    job_id       TEXT,
    at           TEXT NOT NULL
);
"""


class Database:
    """A thread-safe handle on the SQLite file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit, with explicit BEGIN IMMEDIATE in tx() where it matters.
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a sample acknowledged with 201 survives even a power cut, not only a process crash.
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(_SCHEMA)
            self._migrate()
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _migrate(self) -> None:
        """Bring a database written by an earlier graft up to this schema (new columns only, so far)."""
        columns = {row["name"] for row in self._conn.execute("PRAGMA table_info(jobs)")}
        if "config" not in columns:  # schema 1
            self._conn.execute("ALTER TABLE jobs ADD COLUMN config TEXT")

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: everything inside commits together or not at all."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One autocommitted statement; returns the number of rows changed."""
        with self._lock:
            return self._conn.execute(sql, params).rowcount

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
            return row

    def get_meta(self, key: str) -> str | None:
        row = self.one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        self.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = ?",
                     (key, value, value))  # fmt: skip

    def ping(self) -> bool:
        try:
            return self.one("SELECT 1") is not None
        except sqlite3.Error:
            return False

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def loads(text: str | None, default: Any = None) -> Any:
    if text is None or text == "":
        return default
    return json.loads(text)
