"""Older database files, made from a current one: what a migration test opens."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def without_tallies(path: Path, rows: str, tallies: str, version: int) -> None:
    """Turn the closed database at ``path`` back into ``version``, from before the ``tallies`` table that
    triggers on ``rows`` keep (``<rows>_tally_*``): the triggers and the table dropped, the rows kept."""
    con = sqlite3.connect(path)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE ?",
                                           (f"{rows}_tally_%",))]  # fmt: skip
        assert names, f"no {rows}_tally_* triggers in {path}"
        con.executescript("".join(f"DROP TRIGGER {name}; " for name in names)
                          + f"DROP TABLE {tallies}; PRAGMA user_version={version};")  # fmt: skip
    finally:
        con.close()
