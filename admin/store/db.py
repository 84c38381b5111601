"""The admin's metadata store: one SQLite file (WAL) holding samples, jobs, models and deployments.

One writing connection guarded by a lock serves the request threads, the job thread and the capture indexer:
transactions stay simple and serialised. Reads outside a transaction go through a read-only connection per
thread instead (WAL: a reader sees the last commit and never waits for a writer), so a probe or a page never
queues behind the indexer's batch; a read inside the thread's own transaction uses the writer, to see its writes.
The image bytes live beside it as content-addressed files; SQLite only points at them.
Every SQL statement of the admin lives in this package (admin/store/).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import urllib.parse
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from admin.store import capture_tallies, sample_tallies
from graft.core.util import private_dir

SCHEMA_VERSION = 12

_SAMPLES = """
CREATE TABLE IF NOT EXISTS samples (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order: "since the champion was trained"
    sha256       TEXT NOT NULL UNIQUE,               -- content address of the bytes, and the public id
    label        TEXT NOT NULL,
    split        TEXT NOT NULL CHECK (split IN ('train', 'holdout')),
    path         TEXT NOT NULL,                      -- relative to the state folder
    size         INTEGER NOT NULL,
    format       TEXT NOT NULL,
    width        INTEGER NOT NULL,
    height       INTEGER NOT NULL,
    received_at  TEXT NOT NULL,
    pixels_sha   TEXT,                               -- sha256 of the decoded pixels: the split follows it
    phash        TEXT,                               -- 64-bit perceptual hash (hex): near-duplicates
    split_reason TEXT,                               -- "hash split" | "balanced split" | "near-duplicate of <id>"
    uploader     TEXT                                -- the token that stored it: admin | samples | insecure (schema 8)
);
CREATE INDEX IF NOT EXISTS samples_label ON samples (label, split);
-- The intake reads the holdout rows stored since it last looked; the browse pages list a label newest first.
CREATE INDEX IF NOT EXISTS samples_split ON samples (split, seq);
CREATE INDEX IF NOT EXISTS samples_label_seq ON samples (label, seq);
"""

_JOBS = """
CREATE TABLE IF NOT EXISTS jobs (
    id                TEXT PRIMARY KEY,
    status            TEXT NOT NULL
                      CHECK (status IN ('queued', 'running', 'succeeded', 'held', 'rejected', 'failed')),
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
    replay            TEXT,                               -- the shadow replay's report, when one ran
    data_check        TEXT,                               -- the model in service on the new samples
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
"""

# Schema 8: corrections. Every change to the data (samples, labels, review decisions) is recorded: who (the
# token's role), what, when. A deleted sample's file waits in ``trash`` until no job is active, because a running
# job's snapshot lists file paths and must keep reading the data it started with.
_CORRECTIONS = """
CREATE TABLE IF NOT EXISTS audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    actor   TEXT NOT NULL,                -- admin | samples | insecure
    action  TEXT NOT NULL,                -- e.g. sample.delete, sample.relabel, label.merge, review.undo
    target  TEXT NOT NULL,                -- a sample id, a label, a capture id
    detail  TEXT NOT NULL DEFAULT '{}'    -- JSON: what it was and what it became
);
CREATE INDEX IF NOT EXISTS audit_target ON audit (target);
CREATE TABLE IF NOT EXISTS trash (
    path        TEXT PRIMARY KEY,         -- relative to the state folder
    sample_id   TEXT NOT NULL,
    deleted_at  TEXT NOT NULL
);
"""

_SCHEMA = _SAMPLES + _JOBS + """
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

-- The label set the admin owns: the labels of the models in service and the ones an admin approved.
-- ``key`` is the NFKC, case-folded form: "Ants", "ants" and full-width "ａｎｔｓ" are one label.
CREATE TABLE IF NOT EXISTS labels (
    key         TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    source      TEXT NOT NULL CHECK (source IN ('model', 'admin')),
    created_at  TEXT NOT NULL,
    position    INTEGER          -- the review page's key order: a new label goes last, so no key moves (schema 8)
);

-- Served inputs the inference workers captured (files in the capture folder), indexed for the review queue,
-- replay and drift. ``status``: queued for review, a near-duplicate of another capture or of a sample, labelled
-- (became sample ``sample_id``), skipped, rejected (none of the classes), deleted, or gone (pruned by the budget).
CREATE TABLE IF NOT EXISTS captures (
    id             TEXT PRIMARY KEY,           -- the worker's id: capture time in ns, then random hex
    model_name     TEXT NOT NULL,
    model_version  TEXT NOT NULL,
    captured_at    REAL NOT NULL,              -- Unix seconds
    request_id     TEXT NOT NULL DEFAULT '',
    image_file     TEXT NOT NULL,              -- the segment file holding it, in CAPTURE_DIR/<model_name>/
    file_offset    INTEGER NOT NULL DEFAULT 0, -- where the capture starts in that file, and its length
    file_length    INTEGER NOT NULL DEFAULT 0,
    predicted      TEXT NOT NULL,
    labels         TEXT NOT NULL,              -- JSON: top-k labels, most probable first
    scores         TEXT NOT NULL,              -- JSON: their probabilities
    margin         REAL NOT NULL,
    entropy        REAL NOT NULL,
    pixels_sha     TEXT,
    phash          TEXT,
    status         TEXT NOT NULL CHECK (status IN
                   ('queued', 'duplicate', 'labelled', 'skipped', 'rejected', 'deleted', 'gone', 'unreadable')),
    duplicate_of   TEXT,                       -- a capture id, or 'sample:<id>'
    seen           INTEGER NOT NULL DEFAULT 1, -- this picture and its near-duplicates
    label          TEXT,
    sample_id      TEXT,
    reviewed_at    TEXT,
    indexed_at     TEXT NOT NULL,
    reviewed_by    TEXT,                       -- the token that decided: admin | samples | insecure (schema 8)
    created_sample INTEGER NOT NULL DEFAULT 0  -- 1: the label decision stored a new sample (undo removes it)
);
CREATE INDEX IF NOT EXISTS captures_queue ON captures (model_name, status, margin);
CREATE INDEX IF NOT EXISTS captures_time ON captures (model_name, captured_at);
-- How far the index has read each workers' segment file (graft.core.capture).
CREATE TABLE IF NOT EXISTS capture_segments (
    model_name  TEXT NOT NULL,
    name        TEXT NOT NULL,
    read_to     INTEGER NOT NULL,
    PRIMARY KEY (model_name, name)
);
-- Indexing looks every new capture up by its pixels: without this, a scan of the whole table per capture.
CREATE INDEX IF NOT EXISTS captures_pixels ON captures (model_name, pixels_sha);
-- Pictures an admin erased (schema 9): every capture of one, then and later, has its image erased on sight.
CREATE TABLE IF NOT EXISTS erased_pictures (
    capture_id  TEXT PRIMARY KEY,               -- the capture the erasure was asked for
    pixels_sha  TEXT,                           -- its fingerprint: the same pixels,
    phash       TEXT,                           -- or a perceptual hash within NEAR_DUPLICATE_BITS
    erased_at   TEXT NOT NULL
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
""" + _CORRECTIONS


class Database:
    """A thread-safe handle on the SQLite file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        private_dir(self.path.parent)
        # Owner only: SQLite gives its -wal and -shm files the database file's permissions.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        if self.path.stat().st_mode & 0o077:
            with contextlib.suppress(PermissionError):  # not ours to change: the folder above is private anyway
                self.path.chmod(0o600)
        # isolation_level=None: autocommit, with explicit BEGIN IMMEDIATE in tx() where it matters.
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._local = threading.local()  # per thread: its read connection, and how deep in tx() it is
        # (thread, its read connection): closed when the thread has ended, or with the database.
        self._readers: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        self._readers_lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a sample acknowledged with 201 survives even a power cut, not only a process crash.
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(_SCHEMA)
            self._migrate()
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _migrate(self) -> None:
        """Bring a database written by an earlier graft up to this schema."""
        self._add_columns()
        # Here, not in the schema: on an older database the columns exist only after the lines above.
        self._conn.execute("CREATE INDEX IF NOT EXISTS samples_pixels ON samples (pixels_sha)")
        self._conn.execute("CREATE INDEX IF NOT EXISTS samples_uploader ON samples (uploader, seq)")
        self._conn.execute("CREATE INDEX IF NOT EXISTS captures_reviewed ON captures (reviewed_by, reviewed_at)")
        # Schema 10: captures bounded and read by index (admin/store/captures.py says which query uses which).
        for ddl in ("captures_entropy ON captures (model_name, status, entropy)",
                    "captures_segment ON captures (model_name, image_file)",
                    "captures_gone ON captures (captured_at) WHERE status = 'gone'"):  # fmt: skip
            self._conn.execute(f"CREATE INDEX IF NOT EXISTS {ddl}")
        with self.tx() as conn:
            capture_tallies.install(conn)
            sample_tallies.install(conn)  # schema 11
        self._number_labels()
        ddl = self._conn.execute("SELECT sql FROM sqlite_master WHERE name = 'jobs'").fetchone()["sql"]
        if "'held'" not in ddl:  # schema 3: a CHECK constraint cannot be altered, the table is rebuilt
            cols = ", ".join(row["name"] for row in self._conn.execute("PRAGMA table_info(jobs)"))
            self._conn.executescript(
                "BEGIN; ALTER TABLE jobs RENAME TO jobs_old; DROP INDEX IF EXISTS jobs_one_active;" + _JOBS
                + f"INSERT INTO jobs ({cols}) SELECT {cols} FROM jobs_old; DROP TABLE jobs_old; COMMIT;"
            )

    def _add_columns(self) -> None:
        added = {
            "jobs": [("config", "TEXT"), ("replay", "TEXT"), ("data_check", "TEXT")],  # schema 1, 4, 12
            # schema 3; split_reason: schema 7; uploader: schema 8
            "samples": [("pixels_sha", "TEXT"), ("phash", "TEXT"), ("split_reason", "TEXT"), ("uploader", "TEXT")],
            # schema 6: captures live in segment files; schema 8: who decided, and whether a sample was created
            "captures": [("file_offset", "INTEGER NOT NULL DEFAULT 0"), ("file_length", "INTEGER NOT NULL DEFAULT 0"),
                         ("reviewed_by", "TEXT"), ("created_sample", "INTEGER NOT NULL DEFAULT 0")],
            "labels": [("position", "INTEGER")],  # schema 8
        }  # fmt: skip
        for table, columns in added.items():
            have = {row["name"] for row in self._conn.execute(f"PRAGMA table_info({table})")}
            for column, kind in columns:
                if column not in have:
                    self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def _number_labels(self) -> None:
        """Labels without a position (schema 7 and before) get one, in the order the review page used to show them
        (by name): nobody's keys move on upgrade, and from then on a new label goes last."""
        rows = self._conn.execute("SELECT key FROM labels WHERE position IS NULL ORDER BY name").fetchall()
        top = self._conn.execute("SELECT COALESCE(MAX(position), 0) FROM labels").fetchone()[0]
        for i, row in enumerate(rows, start=int(top) + 1):
            self._conn.execute("UPDATE labels SET position = ? WHERE key = ?", (i, row["key"]))

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: everything inside commits together or not at all. Inside another one it is
        a savepoint: its own statements roll back together, and the outer transaction commits them."""
        with self._lock:
            self._local.depth = getattr(self._local, "depth", 0) + 1
            try:
                yield from self._tx()
            finally:
                self._local.depth -= 1

    def _tx(self) -> Iterator[sqlite3.Connection]:
        if self._conn.in_transaction:
            self._conn.execute("SAVEPOINT nested")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK TO nested")
                self._conn.execute("RELEASE nested")
                raise
            self._conn.execute("RELEASE nested")
            return
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
        if getattr(self._local, "depth", 0):
            with self._lock:
                return self._conn.execute(sql, params).fetchall()
        return self._reader().execute(sql, params).fetchall()

    def one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        if getattr(self._local, "depth", 0):
            with self._lock:
                row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
                return row
        found: sqlite3.Row | None = self._reader().execute(sql, params).fetchone()
        return found

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (autocommit: each statement reads the latest commit)."""
        conn: sqlite3.Connection | None = getattr(self._local, "reader", None)
        if conn is None:
            # Quoted: a folder name with '?' or '#' must not end the file name early.
            uri = f"file:{urllib.parse.quote(str(self.path))}?mode=rw"
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=30)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA query_only=ON")
            with self._readers_lock:
                ended = [(t, c) for t, c in self._readers if t() is None or not t().is_alive()]  # type: ignore[union-attr]
                for entry in ended:
                    entry[1].close()
                    self._readers.remove(entry)
                self._readers.append((weakref.ref(threading.current_thread()), conn))
            self._local.reader = conn
        return conn

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
        with self._readers_lock:
            for _, conn in self._readers:
                conn.close()
            self._readers.clear()
        with self._lock:
            self._conn.close()


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def loads(text: str | None, default: Any = None) -> Any:
    if text is None or text == "":
        return default
    return json.loads(text)
