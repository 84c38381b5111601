"""The SQLite store opens databases written by earlier versions of graft and brings them up to date."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from admin.store.audit import AuditStore
from admin.store.db import SCHEMA_VERSION, Database
from admin.store.jobs import JobStore
from bench.sample_counts import grouped_counts

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
    assert job.data_check is None, "schema 12: a job from before has no data check"
    JobStore(db).update("old", data_check={"flagged": ["ants"]})
    assert (stored := JobStore(db).get("old")) is not None and stored.data_check == {"flagged": ["ants"]}
    assert db.one("SELECT pixels_sha FROM samples WHERE sha256 = 'ab'")["pixels_sha"] is None  # type: ignore[index]
    db.set_meta("model_name", "ab")
    assert db.one("PRAGMA user_version")[0] == SCHEMA_VERSION  # type: ignore[index]
    db.close()
    assert Database(path).get_meta("model_name") == "ab", "and opens again as it is"


# The captures table as schema 5 created it: one file per capture, no offsets.
CAPTURES_5 = """
CREATE TABLE captures (
    id             TEXT PRIMARY KEY,
    model_name     TEXT NOT NULL,
    model_version  TEXT NOT NULL,
    captured_at    REAL NOT NULL,
    request_id     TEXT NOT NULL DEFAULT '',
    image_file     TEXT NOT NULL,
    predicted      TEXT NOT NULL,
    labels         TEXT NOT NULL,
    scores         TEXT NOT NULL,
    margin         REAL NOT NULL,
    entropy        REAL NOT NULL,
    pixels_sha     TEXT,
    phash          TEXT,
    status         TEXT NOT NULL CHECK (status IN
                   ('queued', 'duplicate', 'labelled', 'skipped', 'rejected', 'deleted', 'gone', 'unreadable')),
    duplicate_of   TEXT,
    seen           INTEGER NOT NULL DEFAULT 1,
    label          TEXT,
    sample_id      TEXT,
    reviewed_at    TEXT,
    indexed_at     TEXT NOT NULL
);
INSERT INTO captures (id, model_name, model_version, captured_at, image_file, predicted, labels, scores, margin,
    entropy, status, indexed_at) VALUES ('00000000000000000001-aaaaaaaa', 'ab', '1', 1.0, 'x.png', 'ants', '["ants"]',
    '[1.0]', 1.0, 0.0, 'queued', '2026-11-30');
"""


def test_a_captures_table_of_schema_5_gains_segment_offsets(tmp_path: Path) -> None:
    from admin.store.captures import CaptureStore

    path = tmp_path / "admin.sqlite3"
    con = sqlite3.connect(path)
    con.executescript(CAPTURES_5)
    con.close()
    db = Database(path)
    row = CaptureStore(db).get("00000000000000000001-aaaaaaaa")
    assert row is not None and (row.image_file, row.file_offset, row.file_length) == ("x.png", 0, 0)
    assert CaptureStore(db).read_to("ab") == {}
    db.close()


# What schema 7 had of the tables schema 8 changed: samples without uploader, labels without position, captures
# without who decided; no audit or trash table.
SCHEMA_7 = """
CREATE TABLE samples (seq INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT NOT NULL UNIQUE, label TEXT NOT NULL,
    split TEXT NOT NULL CHECK (split IN ('train', 'holdout')), path TEXT NOT NULL, size INTEGER NOT NULL,
    format TEXT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, received_at TEXT NOT NULL,
    pixels_sha TEXT, phash TEXT, split_reason TEXT);
CREATE TABLE labels (key TEXT PRIMARY KEY, name TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('model', 'admin')), created_at TEXT NOT NULL);
INSERT INTO samples (sha256, label, split, path, size, format, width, height, received_at, split_reason)
    VALUES ('cd', 'battery', 'train', 'samples/cd/cd.jpg', 10, 'JPEG', 4, 4, '2026-01-01', 'hash split');
INSERT INTO labels (key, name, source, created_at) VALUES ('wasps', 'wasps', 'admin', '2026-01-03'),
    ('ants', 'ants', 'model', '2026-01-01'), ('battery', 'battery', 'admin', '2026-01-02');
""" + CAPTURES_5.replace("INSERT INTO captures", "-- schema 6 added the offsets\nINSERT INTO captures").replace(
    "    reviewed_at    TEXT,\n", "    reviewed_at    TEXT,\n    file_offset    INTEGER NOT NULL DEFAULT 0,\n"
    "    file_length    INTEGER NOT NULL DEFAULT 0,\n"
)


def test_a_database_of_schema_7_gains_corrections(tmp_path: Path) -> None:
    """Schema 8: who uploaded a sample, who decided a capture, the labels' key order, the audit trail, the trash."""
    from admin.store.audit import AuditStore
    from admin.store.captures import CaptureStore
    from admin.store.labels import LabelStore
    from admin.store.samples import SampleStore

    path = tmp_path / "admin.sqlite3"
    con = sqlite3.connect(path)
    con.executescript(SCHEMA_7)
    con.close()
    db = Database(path)
    assert db.one("PRAGMA user_version")[0] == SCHEMA_VERSION == 12  # type: ignore[index]
    assert SampleStore(db, tmp_path).counts() == {"battery": {"train": 1, "holdout": 0}}, "schema 11: from the rows"
    assert db.all("SELECT * FROM erased_pictures") == [], "schema 9: the erased pictures, none yet"
    sample = SampleStore(db, tmp_path).get("cd")
    assert sample is not None and sample.uploader is None, "unknown uploader: only the admin token may correct it"
    labels = LabelStore(db)
    assert [x.name for x in labels.all()] == ["ants", "battery", "wasps"], "the keys the review page showed (by name)"
    labels.add("bees", "bees", "admin")
    assert [(x.name, x.position) for x in labels.all()][-1] == ("bees", 4), "a new label goes last"
    capture = CaptureStore(db).get("00000000000000000001-aaaaaaaa")
    assert capture is not None and capture.reviewed_by is None and capture.created_sample is False
    entry = AuditStore(db).record("admin", "sample.relabel", "cd", before="battery", after="bees")
    assert [e.id for e in AuditStore(db).entries()] == [entry]
    assert SampleStore(db, tmp_path).remove("cd") and SampleStore(db, tmp_path).trash_count() == 1
    db.close()
    db = Database(path)
    assert [x.position for x in LabelStore(db).all()] == [1, 2, 3, 4], "numbered once, not again on reopening"
    db.close()


def test_sample_counts_follow_every_write(tmp_path: Path) -> None:
    """The counts the intake balances on are the triggers' (schema 11): after adds, deletions, relabels, label
    moves and erasures they equal a GROUP BY over the rows, and an older database gets them from its rows."""
    from admin.domain.labels import LabelSet
    from admin.domain.samples import SampleIntake, Upload
    from admin.store.labels import LabelStore
    from admin.store.samples import SampleStore
    from graft.core.images import fingerprint
    from tests.support.images import photo
    from tests.support.schema import without_tallies

    path = tmp_path / "admin.sqlite3"
    db = Database(path)
    store = SampleStore(db, tmp_path)
    intake = SampleIntake(store, LabelSet(LabelStore(db)), 0.3, 1_000_000, 100_000_000)
    stored = intake.accept([Upload(f"{k}.png", photo(k)) for k in range(30)], ["ants"], True)
    stored += intake.accept([Upload(f"b{k}.png", photo(100 + k)) for k in range(20)], ["bees"], True)
    steps = [
        lambda: store.remove(stored[0].id),
        lambda: store.set_label(stored[1].id, "bees"),
        lambda: store.set_label(stored[2].id, "wasps"),
        lambda: store.move_label("bees", "hornets"),
        lambda: store.remove_picture(fingerprint(photo(5)).pixels_sha, None, 0),
        lambda: db.execute("UPDATE samples SET split = 'holdout' WHERE sha256 = ?", (stored[6].id,)),
    ]
    assert store.counts() == grouped_counts(db)
    assert store.counts_of(["ants", "nobody"])["nobody"] == {"train": 0, "holdout": 0}
    for step in steps:
        step()
        assert store.counts() == grouped_counts(db)
    assert set(store.counts()) == {"ants", "hornets", "wasps"}, "labels with no samples left drop out"
    want = store.counts()
    db.close()
    without_tallies(path, "samples", "sample_counts", 10)  # as schema 10 left it: no counts
    db = Database(path)
    assert SampleStore(db, tmp_path).counts() == want
    db.close()


def test_a_change_in_the_same_second_as_a_model_counts_as_after_it(tmp_path: Path) -> None:
    # Times are to the second; a relabel in the second a version was created must not read as "no new data"
    # (a job then told the admin nothing had changed since that version: tests/admin/test_fairness.py, flaky).
    audit = AuditStore(Database(tmp_path / "state.sqlite3"))
    audit.record("admin", "sample.relabel", "s1")
    at = audit.entries(limit=1)[0].at
    assert audit.count_since(at, ("sample.relabel",)) == 1
    assert audit.count_since(at, ("sample.delete",)) == 0
    assert audit.count_since("9999-01-01T00:00:00+00:00", ("sample.relabel",)) == 0
