"""Captures at scale (issue 25, part 3) on a real SQLite file: the tallies the triggers keep equal the table,
pruned rows go, drift from the tallies equals drift over the rows, request-path queries search an index
(never scan the captures table), and a read never waits for a writer's transaction."""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from admin.domain.drift import DriftMonitor, profile, profile_of
from admin.store.capture_tallies import BUCKET_S
from admin.store.captures import CaptureStore
from admin.store.db import Database
from admin.store.rows import CaptureStatus
from graft.core.capture import CaptureRecord
from tests.support.schema import without_tallies

T0 = 1_700_000_003.7  # not on a bucket boundary


def record(i: int, rng: random.Random, model: str = "graft", version: str = "1") -> CaptureRecord:
    top = rng.uniform(0.34, 0.99)
    labels = rng.sample(["ants", "bees", "wasps"], 3)
    scores = [top, (1 - top) * 0.7, (1 - top) * 0.3]
    return CaptureRecord(id=f"{int((T0 + i) * 1e9):020d}-{i:08x}", model_name=model, model_version=version,
                         captured_at=T0 + i * 0.3 + rng.uniform(0, 0.25), request_id=str(i), image_type="png",
                         image_bytes=10, labels=labels, scores=scores, margin=scores[0] - scores[1],
                         entropy=rng.uniform(0, 1.1))  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CaptureStore]:
    db = Database(tmp_path / "admin.sqlite3")
    yield CaptureStore(db)
    db.close()


def fill(store: CaptureStore, n: int, seed: int = 0, segment_every: int = 50) -> list[CaptureRecord]:
    rng = random.Random(seed)
    recs = [record(i, rng, version="1" if i % 7 else "2") for i in range(n)]
    with store.batch():
        for i, r in enumerate(recs):
            status: CaptureStatus = rng.choice(["queued", "queued", "queued", "duplicate", "unreadable"])
            store.add(r, (f"seg-{i // segment_every:04d}.seg", i, 10), status, phash=f"{i:016x}")
            store.set_read_to("graft", f"seg-{i // segment_every:04d}.seg", 10 * (i + 1))
    return recs


def table_counts(store: CaptureStore, model: str = "graft") -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in store.db.all("SELECT predicted, status, COUNT(*) AS n FROM captures WHERE model_name = ? "
                          "GROUP BY predicted, status", (model,)):  # fmt: skip
        out.setdefault(r["predicted"], {})[r["status"]] = int(r["n"])
    return out


def test_tallies_follow_every_write_and_pruned_rows_go(store: CaptureStore) -> None:
    recs = fill(store, 600)
    assert store.counts("graft") == table_counts(store) and store.rows() == 600
    for r in recs[:40:3]:  # decisions: the update trigger moves the count
        store.set_status(r.id, "labelled", label="ants", sample_id="s", reviewed_by="admin")
    store.set_status(recs[1].id, "skipped", reviewed_by="admin")
    store.reopen(recs[3].id)
    assert store.counts("graft") == table_counts(store)
    # The workers prune the first four segments; the last 100 captures are inside the drift window.
    keep_since = recs[500].captured_at
    pruned = store.prune_segments("graft", ["seg-0000.seg", "seg-0001.seg", "seg-0002.seg", "seg-0003.seg"], keep_since)
    assert pruned == 200
    left = {r["id"]: r["status"] for r in store.db.all("SELECT id, status FROM captures")}
    decided = ({r.id for r in recs[:40:3]} | {recs[1].id}) - {recs[3].id}  # reopened: undecided again
    assert all(left[i] == "gone" for i in decided), "decided captures stay, marked gone, for their history"
    assert not any(r.id in left for r in recs[:200] if r.id not in decided), "undecided pruned rows are deleted"
    assert store.read_to("graft").keys().isdisjoint({"seg-0000.seg", "seg-0003.seg"})
    assert store.counts("graft") == table_counts(store) and store.rows() == len(left)
    # Pruned inside the drift window: kept, marked gone, until they leave it.
    assert store.prune_segments("graft", ["seg-0011.seg"], keep_since) == 50
    assert store.db.one("SELECT COUNT(*) AS n FROM captures WHERE image_file = 'seg-0011.seg'")["n"] == 50  # type: ignore[index]
    assert store.forget_gone(recs[599].captured_at + 1) == 50
    assert store.counts("graft") == table_counts(store)
    undecided = "SELECT COUNT(*) AS n FROM captures WHERE status IN ('queued', 'duplicate', 'unreadable', 'gone')"
    before = store.db.one(undecided)["n"]  # type: ignore[index]
    newest = [r["id"] for r in store.db.all(f"{undecided.replace('COUNT(*) AS n', 'id')} ORDER BY id DESC LIMIT 250")]
    assert store.cap(250) == before - 250 > 0
    kept = [r["id"] for r in store.db.all(f"{undecided.replace('COUNT(*) AS n', 'id')} ORDER BY id DESC")]
    assert kept == newest, "the newest 250 undecided rows stay"
    assert store.cap(250) == 0
    assert store.counts("graft") == table_counts(store) and store.rows() == len(store.db.all("SELECT id FROM captures"))


def test_an_older_database_gets_its_counts_from_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "admin.sqlite3"
    db = Database(path)
    store = CaptureStore(db)
    fill(store, 120)
    want = store.counts("graft")
    db.close()
    without_tallies(path, "captures", "capture_counts", 9)  # as schema 9 left it: no tallies
    db = Database(path)
    assert CaptureStore(db).counts("graft") == want == table_counts(CaptureStore(db))
    db.close()


@pytest.mark.parametrize("low_margin", [0.2, 0.35])
def test_drift_from_the_tallies_equals_drift_over_the_rows(store: CaptureStore, low_margin: float) -> None:
    recs = fill(store, 900, seed=3)
    monitor = DriftMonitor(store.db, store, lambda *_: ([], []), "cpu", low_margin, 10)  # rebuilds the buckets
    rng = random.Random(5)
    last = max(r.captured_at for r in recs)
    spans = [(T0 - 5, last + 5), (T0 + 1.3, T0 + 2.9)]  # all of it; less than a bucket
    spans += [(rng.uniform(T0, last), 0.0) for _ in range(20)]
    for version in ("1", "2"):
        for start, end in spans:
            end = end or start + rng.uniform(1, 5 * BUCKET_S)
            old = profile(store.answers("graft", version, start, end), low_margin)  # the computation before
            whole, edges = store.window("graft", version, start, end)
            assert profile_of(whole, edges, low_margin) == old, (version, start, end)
            assert len(edges) <= len(store.answers("graft", version, start, end))
    report = monitor.report("graft", _Champion("1"), None, window_s=30.0, windows=3, now=T0 + 200.25)  # type: ignore[arg-type]
    for w, i in zip(report["windows"], range(3), strict=True):
        hi = T0 + 200.25 - i * 30
        assert w["captures"] == profile(store.answers("graft", "1", hi - 30, hi), low_margin).n


class _Champion:
    def __init__(self, version: str):
        self.version = version


def test_drift_buckets_outlive_the_rows_they_count(store: CaptureStore) -> None:
    """Drift counts what the model answered: pruning the rows does not change a window of whole buckets."""
    recs = fill(store, 300, seed=4)
    DriftMonitor(store.db, store, lambda *_: ([], []), "cpu", 0.2, 10)
    start, end = T0 - 3.7, T0 + 10 * BUCKET_S * 100  # bucket boundaries: no ragged edges
    before = profile_of(*store.window("graft", "1", start, end), 0.2)
    store.prune_segments("graft", [f"seg-{i:04d}.seg" for i in range(6)])
    assert store.rows() < 300 - 200
    assert profile_of(*store.window("graft", "1", start, end), 0.2) == before and before.n == sum(
        1 for r in recs if r.model_version == "1")
    assert store.forget_windows(max(r.captured_at for r in recs) + BUCKET_S) > 0
    assert profile_of(*store.window("graft", "1", start, end), 0.2).n == 0


class _Recorder:
    def __init__(self, db: Database):
        self.db, self.sql = db, []  # type: list[tuple[str, Any]]
        for name in ("all", "one", "execute"):
            setattr(db, name, self._wrap(getattr(db, name)))

    def _wrap(self, fn: Any) -> Any:
        def call(sql: str, params: Any = ()) -> Any:
            self.sql.append((sql, params))
            return fn(sql, params)

        return call


def test_request_path_queries_search_an_index(store: CaptureStore) -> None:
    """No full scan of the captures table on the request paths and in the sweep: no statement's plan scans it or
    sorts or groups all of a model's rows (what ``ORDER BY random()`` and the old ``GROUP BY`` counts did)."""
    recs = fill(store, 400)
    DriftMonitor(store.db, store, lambda *_: ([], []), "cpu", 0.2, 10)
    store.db.execute("ANALYZE")
    rec = _Recorder(store.db)
    store.counts("graft")
    store.rows()
    for strategy in ("margin", "entropy", "random"):
        store.review("graft", strategy, 20)  # type: ignore[arg-type]
    store.window("graft", "1", recs[10].captured_at, recs[300].captured_at)
    store.cap(10**6)
    store.forget_gone(recs[5].captured_at)
    store.read_to("graft")
    conn = sqlite3.connect(store.db.path)
    scans = []
    for sql, params in rec.sql:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
        scans += [(sql, line) for line in plan if line.startswith("SCAN captures")
                  or (" FROM captures " in f"{sql} " and line in ("USE TEMP B-TREE FOR ORDER BY",
                                                                   "USE TEMP B-TREE FOR GROUP BY"))]  # fmt: skip
    conn.close()
    assert len(rec.sql) >= 10 and not scans, scans


def test_a_read_does_not_wait_for_a_writers_transaction(store: CaptureStore) -> None:
    """WAL and a read connection per thread: while the indexer's batch holds the write lock, a probe's read
    answers from the last commit instead of queueing behind it."""
    fill(store, 30)
    inside, release, answered = threading.Event(), threading.Event(), threading.Event()

    def indexer() -> None:
        with store.batch() as conn:
            conn.execute("UPDATE captures SET status = 'skipped' WHERE status = 'queued'")
            inside.set()
            release.wait(10)

    t = threading.Thread(target=indexer)
    t.start()
    assert inside.wait(10)
    seen: list[Any] = []
    reader = threading.Thread(target=lambda: (seen.append(store.counts("graft")), answered.set()))
    reader.start()
    try:
        assert answered.wait(5), "the read waited for the writer's transaction"
        assert all("skipped" not in by for by in seen[0].values()), "it saw the last commit, not the open batch"
    finally:
        release.set()
        t.join()
        reader.join()
    assert any("skipped" in by for by in store.counts("graft").values())
    assert store.counts("graft") == table_counts(store)


def test_the_read_connection_opens_the_same_file_whatever_its_folder_is_called(tmp_path: Path) -> None:
    db = Database(tmp_path / "state ?#%20" / "admin.sqlite3")  # a URI would end the name at '?' or '#'
    db.set_meta("k", "v")
    seen: list[str | None] = []
    t = threading.Thread(target=lambda: seen.append(db.get_meta("k")))  # a thread outside any transaction
    t.start()
    t.join()
    assert seen == ["v"] and not (tmp_path / "state ").exists()
    db.close()
