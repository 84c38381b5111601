"""The capture budget bounds the admin's database, not only the segment files: tiny captures through the
handler's own writer (its disk budget pruning the oldest segments) and the admin's own index, on real SQLite."""

from __future__ import annotations

import io
import random
import time
from pathlib import Path

from PIL import Image

from admin.domain.captures import CaptureIndex
from admin.store.captures import CaptureStore
from admin.store.db import Database
from admin.store.samples import SampleStore
from graft.core.capture import read_captures
from handlers.capture import CaptureWriter
from tests.support.waiting import wait_for


def tiny(i: int) -> bytes:
    """An 8x8 PNG of its own pixels (about 250 bytes): the case where files are small and rows are not."""
    buf = io.BytesIO()
    Image.frombytes("RGB", (8, 8), random.Random(i).randbytes(192)).save(buf, "PNG")
    return buf.getvalue()


def db_bytes(db: Database, path: Path) -> int:
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def feed(writer: CaptureWriter, stored: list[int], start: int, n: int) -> None:
    for i in range(start, start + n):
        while writer.queue.full():
            time.sleep(0.001)
        writer.offer(tiny(i), [0.6, 0.4], str(i))
    wait_for(lambda: stored[0] >= start + n, 30, what="the writer")


def test_the_database_stays_bounded_under_a_capture_budget(tmp_path: Path) -> None:
    budget = 256 * 1024
    stored = [0]
    writer = CaptureWriter(tmp_path / "captures", "graft", "1", ["ants", "bees"], 1.0, budget,
                           lambda outcome, n: stored.__setitem__(0, stored[0] + (n if outcome == "stored" else 0)))
    path = tmp_path / "admin.sqlite3"
    db = Database(path)
    store = CaptureStore(db)
    index = CaptureIndex(store, SampleStore(db, tmp_path / "samples"), tmp_path / "captures", 10**7)
    sizes, rows = [], []
    for round_ in range(8):  # each round offers about twice what the budget holds
        feed(writer, stored, round_ * 1500, 1500)
        while index.sync("graft", limit=500):
            pass
        index.sweep("graft", keep=100_000)
        sizes.append(db_bytes(db, path))
        rows.append(store.rows())
    kept = len(read_captures(tmp_path / "captures", "graft"))
    assert rows[-1] <= kept, "a row for each capture the files still hold, none for pruned ones"
    assert sizes[-1] <= 1.15 * sizes[2], f"the database stops growing once the budget is full: {sizes}"
    per_capture = sizes[-1] / max(1, rows[-1])
    assert per_capture < 2000, per_capture
    db.close()


def test_the_index_is_capped_whatever_the_files_hold(tmp_path: Path) -> None:
    stored = [0]
    writer = CaptureWriter(tmp_path / "captures", "graft", "1", ["ants", "bees"], 1.0, 10**9,
                           lambda outcome, n: stored.__setitem__(0, stored[0] + (n if outcome == "stored" else 0)))
    db = Database(tmp_path / "admin.sqlite3")
    store = CaptureStore(db)
    index = CaptureIndex(store, SampleStore(db, tmp_path / "samples"), tmp_path / "captures", 10**7)
    feed(writer, stored, 0, 800)
    while index.sync("graft", limit=500):
        pass
    assert store.rows() == 800
    index.sweep("graft", keep=300)
    kept = store.review("graft", "margin", 1000)
    assert store.rows() == 300 and len(kept) == 300, "the newest 300 stay queued"
    newest = sorted(c.record.id for c in read_captures(tmp_path / "captures", "graft"))[-300:]
    assert sorted(r.id for r in kept) == newest
    db.close()
