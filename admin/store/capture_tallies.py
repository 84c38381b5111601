"""Running tallies of the captures table, kept by SQLite triggers (schema 10).

With a million capture rows, a ``GROUP BY`` over the table (the review counts, the capture gauges) or over a
drift window (every answer's JSON scores parsed) took seconds of CPU. The triggers keep both answers current
as rows come and go, so each request reads a few rows instead of the table:

* ``capture_counts``: per model, predicted label and status, the rows that have that status now (``present``):
  exactly what a ``GROUP BY`` over the table would say, rows deleted by pruning and the cap included.
* ``capture_windows``: per model, version, :data:`BUCKET_S`-second bucket and predicted label, how many
  answers, the sum of their top-1 scores and how many had a margin under the drift setting ``low_margin``
  (kept in ``meta`` as :data:`LOW_MARGIN_KEY`; a change rebuilds the table from the rows there). They are
  written when a capture is indexed and never follow a deletion: drift counts what the model answered.

Every write path (the indexer, review decisions, pruning, the cap) goes through the triggers, so no
Python code can forget one.
"""

from __future__ import annotations

import sqlite3

BUCKET_S = 10  # seconds per drift bucket: a window's edges read at most this much of raw rows each
LOW_MARGIN_KEY = "capture_windows_low_margin"

_TABLES = f"""
CREATE TABLE IF NOT EXISTS capture_counts (
    model_name  TEXT NOT NULL,
    predicted   TEXT NOT NULL,
    status      TEXT NOT NULL,
    present     INTEGER NOT NULL DEFAULT 0,   -- rows with this status now
    PRIMARY KEY (model_name, predicted, status)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS capture_windows (
    model_name     TEXT NOT NULL,
    model_version  TEXT NOT NULL,
    bucket         INTEGER NOT NULL,          -- Unix seconds, a multiple of {BUCKET_S}
    predicted      TEXT NOT NULL,
    n              INTEGER NOT NULL DEFAULT 0,
    top1           REAL NOT NULL DEFAULT 0,   -- sum of the top-1 scores
    low            INTEGER NOT NULL DEFAULT 0,-- answers with margin < the low_margin setting
    PRIMARY KEY (model_name, model_version, bucket, predicted)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS capture_windows_age ON capture_windows (bucket);
"""

_BUMP = ("INSERT INTO capture_counts (model_name, predicted, status, {col}) VALUES ({m}, {p}, {s}, {d}) "
         "ON CONFLICT (model_name, predicted, status) DO UPDATE SET {col} = {col} + {d};")  # fmt: skip

_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS captures_tally_insert AFTER INSERT ON captures BEGIN "
    + _BUMP.format(col="present", m="NEW.model_name", p="NEW.predicted", s="NEW.status", d=1)
    + "INSERT INTO capture_windows (model_name, model_version, bucket, predicted, n, top1, low) VALUES "
    f"(NEW.model_name, NEW.model_version, CAST(NEW.captured_at / {BUCKET_S} AS INTEGER) * {BUCKET_S}, NEW.predicted,"
    " 1, COALESCE(json_extract(NEW.scores, '$[0]'), 0),"
    f" COALESCE(NEW.margin < (SELECT CAST(value AS REAL) FROM meta WHERE key = '{LOW_MARGIN_KEY}'), 0)) "
    "ON CONFLICT (model_name, model_version, bucket, predicted) DO UPDATE SET n = n + excluded.n,"
    " top1 = top1 + excluded.top1, low = low + excluded.low; END;",
    "CREATE TRIGGER IF NOT EXISTS captures_tally_status AFTER UPDATE OF status ON captures "
    "WHEN OLD.status IS NOT NEW.status BEGIN "
    + _BUMP.format(col="present", m="OLD.model_name", p="OLD.predicted", s="OLD.status", d=-1)
    + _BUMP.format(col="present", m="NEW.model_name", p="NEW.predicted", s="NEW.status", d=1)
    + "END;",
    "CREATE TRIGGER IF NOT EXISTS captures_tally_delete AFTER DELETE ON captures BEGIN "
    + _BUMP.format(col="present", m="OLD.model_name", p="OLD.predicted", s="OLD.status", d=-1)
    + "END;",
)


def install(conn: sqlite3.Connection) -> None:
    """Create the tallies and their triggers; a database from before schema 10 gets its counts from its rows,
    in the same transaction (its drift buckets are built by :func:`rebuild_windows` once the setting is known)."""
    new = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'capture_counts'").fetchone() is None
    # One statement at a time: executescript() would commit the caller's transaction first.
    for statement in (*(t.strip() for t in _TABLES.split(";") if t.strip()), *_TRIGGERS):
        conn.execute(statement)
    if new:
        conn.execute("DELETE FROM capture_counts")
        conn.execute("INSERT INTO capture_counts (model_name, predicted, status, present) "
                     "SELECT model_name, predicted, status, COUNT(*) FROM captures GROUP BY 1, 2, 3")  # fmt: skip


def rebuild_windows(conn: sqlite3.Connection, low_margin: float) -> None:
    """The drift buckets again from the rows there, for a new ``low_margin`` (inside the caller's transaction).
    Rows already deleted are not in them: only a change of the setting loses that history."""
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                 (LOW_MARGIN_KEY, repr(float(low_margin))))  # fmt: skip
    conn.execute("DELETE FROM capture_windows")
    conn.execute(
        "INSERT INTO capture_windows (model_name, model_version, bucket, predicted, n, top1, low) "
        f"SELECT model_name, model_version, CAST(captured_at / {BUCKET_S} AS INTEGER) * {BUCKET_S}, predicted,"
        " COUNT(*), TOTAL(COALESCE(json_extract(scores, '$[0]'), 0)), TOTAL(margin < ?) FROM captures"
        " GROUP BY 1, 2, 3, 4",
        (float(low_margin),),
    )  # fmt: skip
