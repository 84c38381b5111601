"""The SQLite store opens databases written by earlier versions of graft and brings them up to date."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from admin.store.db import SCHEMA_VERSION, Database
from admin.store.jobs import JobStore

# The tables as graft 0.1.0 (schema 1) created them: jobs without config, samples without fingerprints,
# the jobs status CHECK without 'held', no meta or labels table.
SCHEMA_1 = """
CREATE TABLE samples (seq INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT NOT NULL UNIQUE, label TEXT NOT NULL,
    split TEXT NOT NULL CHECK (split IN ('train', 'holdout')), path TEXT NOT NULL, size INTEGER NOT NULL,
    format TEXT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, received_at TEXT NOT NULL);
CREATE TABLE jobs (id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'rejected', 'failed')),
    phase TEXT NOT NULL DEFAULT 'queued', progress REAL NOT NULL DEFAULT 0, trigger TEXT NOT NULL DEFAULT 'api',
    params TEXT NOT NULL DEFAULT '{}', candidate_version TEXT, champion_version TEXT, candidate_metrics TEXT,
    champion_metrics TEXT, gate TEXT, promoted INTEGER NOT NULL DEFAULT 0, reason TEXT NOT NULL DEFAULT '',
    dataset_digest TEXT, max_sample_seq INTEGER, job_dir TEXT, pid INTEGER, created_at TEXT NOT NULL,
    started_at TEXT, finished_at TEXT);
CREATE UNIQUE INDEX jobs_one_active ON jobs ((status IN ('queued', 'running'))) WHERE status IN ('queued', 'running');
INSERT INTO samples (sha256, label, split, path, size, format, width, height, received_at)
    VALUES ('ab', 'ants', 'train', 'samples/ab/ab.jpg', 10, 'JPEG', 4, 4, '2026-01-01');
INSERT INTO jobs (id, status, phase, params, reason, created_at, job_dir)
    VALUES ('old', 'succeeded', 'switching', '{"epochs": 3}', 'promoted version 2', '2026-01-01', '/j');
"""


def test_a_database_of_an_earlier_graft_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "admin.sqlite3"
    con = sqlite3.connect(path)
    con.executescript(SCHEMA_1)
    con.close()
    db = Database(path)
    job = JobStore(db).get("old")
    assert job is not None and job.status == "succeeded" and job.params == {"epochs": 3} and job.config is None
    JobStore(db).update("old", status="held")  # the new status passes the rebuilt CHECK
    assert db.one("SELECT pixels_sha FROM samples WHERE sha256 = 'ab'")["pixels_sha"] is None  # type: ignore[index]
    db.set_meta("model_name", "ab")
    assert db.one("PRAGMA user_version")[0] == SCHEMA_VERSION  # type: ignore[index]
    db.close()
    assert Database(path).get_meta("model_name") == "ab", "and opens again as it is"
