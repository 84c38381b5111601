"""Running counts of the samples per label and split, kept by SQLite triggers (schema 11).

The intake reads a label's counts on every upload request (each label's holdout is kept near its share:
``admin.domain.samples.balance``), and the status page reads them all. A ``GROUP BY`` over the samples grows
with the table (about 2 ms per 10,000 samples of a label); the triggers keep ``sample_counts`` exactly what
that ``GROUP BY`` would say as rows are added, deleted, relabelled or moved, so a request reads a few rows.
Every write path goes through the triggers, so no Python code can forget one.
"""

from __future__ import annotations

import sqlite3

_TABLE = """
CREATE TABLE IF NOT EXISTS sample_counts (
    label  TEXT NOT NULL,
    split  TEXT NOT NULL,
    n      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (label, split)
) WITHOUT ROWID
"""

_BUMP = ("INSERT INTO sample_counts (label, split, n) VALUES ({label}, {split}, {d}) "
         "ON CONFLICT (label, split) DO UPDATE SET n = n + {d};")  # fmt: skip

_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS samples_tally_insert AFTER INSERT ON samples BEGIN "
    + _BUMP.format(label="NEW.label", split="NEW.split", d=1) + "END;",
    "CREATE TRIGGER IF NOT EXISTS samples_tally_update AFTER UPDATE OF label, split ON samples "
    "WHEN OLD.label IS NOT NEW.label OR OLD.split IS NOT NEW.split BEGIN "
    + _BUMP.format(label="OLD.label", split="OLD.split", d=-1)
    + _BUMP.format(label="NEW.label", split="NEW.split", d=1) + "END;",
    "CREATE TRIGGER IF NOT EXISTS samples_tally_delete AFTER DELETE ON samples BEGIN "
    + _BUMP.format(label="OLD.label", split="OLD.split", d=-1) + "END;",
)


def install(conn: sqlite3.Connection) -> None:
    """Create the counts and their triggers; a database from before schema 11 gets its counts from its rows, in
    the same transaction."""
    new = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sample_counts'").fetchone() is None
    for statement in (_TABLE, *_TRIGGERS):  # one at a time: executescript() would commit the caller's transaction
        conn.execute(statement)
    if new:
        conn.execute("INSERT INTO sample_counts (label, split, n) "
                     "SELECT label, split, COUNT(*) FROM samples GROUP BY 1, 2")  # fmt: skip
