"""Review pages at scale (issue 25): a keyset cursor returns each queued capture once while captures arrive and
others are decided, its query seeks an index (never scans or skips rows), and the page's own indexing step costs
what arrived (only segments that grew are opened; nothing new: no write transaction, no wait on a writer)."""

from __future__ import annotations

import builtins
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from admin.domain.captures import CaptureIndex
from admin.store.captures import BadCursorError, CaptureStore, Strategy, cursor_of, parse_cursor
from admin.store.db import Database
from admin.store.samples import SampleStore
from graft.core.capture import CaptureRecord, encode
from tests.admin import test_review
from tests.admin.test_capture_scale import _Recorder, fill, record
from tests.admin.test_review import Served
from tests.support.auth import SAMPLER
from tests.support.images import photo
from tests.support.waiting import error_of

_KEY = {"margin": lambda r: (r.margin, -r.captured_at), "entropy": lambda r: (-r.entropy, -r.captured_at)}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CaptureStore]:
    db = Database(tmp_path / "admin.sqlite3")
    yield CaptureStore(db)
    db.close()


@pytest.mark.parametrize("strategy", ["margin", "entropy"])
def test_a_cursor_walk_returns_each_capture_once_while_others_arrive_and_are_decided(
    store: CaptureStore, strategy: Strategy
) -> None:
    fill(store, 300)
    rng = random.Random(1)
    before = {r.id for r in store.review("graft", strategy, 1000)}
    decided: set[str] = set()
    seen: list[str] = []
    keys: list[Any] = []
    after: str | None = None
    for page in range(1000):
        rows = store.review("graft", strategy, 17, after=after)
        seen += [r.id for r in rows]
        keys += [_KEY[strategy](r) for r in rows]
        if len(rows) < 17:
            break
        after = cursor_of(rows[-1], strategy)
        # Between pages: new captures anywhere in the order (many ahead of the cursor), and decisions on others.
        with store.batch():
            for i in range(5):
                store.add(record(10_000 + 5 * page + i, rng), ("seg-new.seg", 0, 10), "queued")
        pool = sorted(before - set(seen) - decided)
        for cid in rng.sample(pool, min(2, len(pool))):
            store.set_status(cid, "skipped")
            decided.add(cid)
    assert len(seen) == len(set(seen)), "no capture twice"
    assert before - decided <= set(seen), "every capture queued all along, once"
    assert keys == sorted(keys), "one walk in the strategy's order"


def test_the_cursor_query_seeks_the_index_at_any_depth(store: CaptureStore) -> None:
    fill(store, 400)
    store.db.execute("ANALYZE")
    deep = store.review("graft", "margin", 200)[-1]
    rec = _Recorder(store.db)
    rows = {s: store.review("graft", s, 20, after=cursor_of(deep, s)) for s in ("margin", "entropy")}
    assert rows["margin"][0].margin >= deep.margin and rows["margin"][0].id != deep.id
    conn = sqlite3.connect(store.db.path)
    plans = [[row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)] for sql, params in rec.sql]
    conn.close()
    assert len(plans) == 2 and not [line for plan in plans for line in plan if line.startswith("SCAN")], plans
    assert "SEARCH captures USING INDEX captures_queue (model_name=? AND status=? AND margin>?)" in plans[0]
    assert "SEARCH captures USING INDEX captures_entropy (model_name=? AND status=? AND entropy<?)" in plans[1]


def test_a_cursor_the_service_did_not_give_is_refused(store: CaptureStore) -> None:
    fill(store, 20)
    row = store.review("graft", "margin", 1)[0]
    good = cursor_of(row, "margin")
    assert parse_cursor(good, "margin") == (row.margin, row.captured_at, row.id)
    for bad, strategy in [("x" * 300, "margin"), ("not base64!", "margin"), (good, "entropy"), (good, "random"),
                          (cursor_of(row, "margin")[:-4], "margin"),
                          ("WyJtYXJnaW4iLDAuMSwwLjIsIjEnIE9SIDE9MSJd", "margin")]:  # fmt: skip
        with pytest.raises(BadCursorError):
            store.review("graft", strategy, 5, after=bad)  # type: ignore[arg-type]
    with pytest.raises(BadCursorError, match="either `offset` or `after`"):
        store.review("graft", "margin", 5, offset=3, after=good)


# ---------------------------------------------------------------------------------------------- the page's sync
def _blob(i: int) -> bytes:
    image = photo(i)
    rec = CaptureRecord(id=f"{time.time_ns():020d}-{i:08x}", model_name="graft", model_version="1",
                        captured_at=time.time(), request_id="", image_type="png", image_bytes=len(image),
                        labels=["ants", "bees"], scores=[0.6, 0.4], margin=0.2, entropy=0.67)  # fmt: skip
    return encode(rec, image)


def test_a_sync_opens_the_segments_that_grew_and_writes_nothing_when_none_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(tmp_path / "admin.sqlite3")
    store = CaptureStore(db)
    index = CaptureIndex(store, SampleStore(db, tmp_path / "samples"), tmp_path / "captures", 10**7)
    folder = tmp_path / "captures" / "graft"
    folder.mkdir(parents=True)
    for i in range(300):  # kept segments the index has read to their end, and empty ones
        (folder / f"{i:020d}-old.seg").write_bytes(_blob(i) if i < 3 else b"")
    assert index.sync("graft") == 3
    live = folder / f"{time.time_ns():020d}-live.seg"
    live.write_bytes(_blob(7))
    opened: list[str] = []
    real_open = builtins.open

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file).endswith(".seg"):
            opened.append(Path(file).name)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    assert index.sync_if_idle("graft") == 1 and opened == [live.name], "only the segment that grew is read"
    opened.clear()
    # Nothing new while a writer holds the database: the page neither opens a segment nor waits for the writer.
    inside, release = threading.Event(), threading.Event()

    def writer() -> None:
        with store.batch():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    assert inside.wait(10)
    done: list[int] = []
    page = threading.Thread(target=lambda: done.append(index.sync_if_idle("graft")))
    page.start()
    page.join(5)
    release.set()
    t.join()
    assert done == [0] and opened == [], "the page waited for another writer's transaction with nothing to write"
    db.close()


def test_warming_the_hashes_holds_no_lock_and_pages_do_not_wait_for_it(tmp_path: Path) -> None:
    db = Database(tmp_path / "admin.sqlite3")
    store = CaptureStore(db)
    fill(store, 50)
    index = CaptureIndex(store, SampleStore(db, tmp_path / "samples"), tmp_path / "captures", 10**7)
    (tmp_path / "captures" / "graft").mkdir(parents=True)
    (tmp_path / "captures" / "graft" / f"{time.time_ns():020d}-live.seg").write_bytes(_blob(1))
    reading, release = threading.Event(), threading.Event()
    real = store.phashes
    locked: list[bool] = []

    def slow_phashes(model_name: str) -> list[tuple[str, int]]:  # a million rows' read, held open by the test
        locked.append(index.lock.locked())
        reading.set()
        release.wait(10)
        return real(model_name)

    store.phashes = slow_phashes  # type: ignore[method-assign]
    warm = threading.Thread(target=index.warm, args=("graft",))
    warm.start()
    assert reading.wait(10)
    t0 = time.monotonic()
    assert index.sync_if_idle("graft") == 0, "a page shows the last commit while the hashes load"
    assert time.monotonic() - t0 < 1.0 and locked == [False]
    release.set()
    warm.join(10)
    store.phashes = real  # type: ignore[method-assign]
    assert index.sync_if_idle("graft") == 1, "then pages index again, with the loaded hashes"
    assert len(index._captures["graft"].ids) == len(store.phashes("graft"))
    db.close()


# ---------------------------------------------------------------------------------------------- over HTTP
served = test_review.served  # the review tests' admin with a capture writer


def test_next_walks_the_queue_page_by_page_over_http(served: Served) -> None:
    ids = [served.capture(photo(seed), p) for seed, p in enumerate([0.9, 0.55, 0.7, 0.99, 0.6])]
    whole = [i["id"] for i in served.queue()]
    assert sorted(whole) == sorted(ids)
    walked: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    for _ in range(5):
        body = served.c.get("/v1/review", params=params, headers=SAMPLER).json()
        walked += [i["id"] for i in body["items"]]
        if body["next"] is None:
            break
        if len(walked) == 2:  # arrives ahead of the cursor (the most uncertain): no shift, no repeat
            served.capture(photo(50), 0.5)
        params = {"limit": 2, "after": body["next"]}
    assert walked == whole, "the same order as one page, each once"
    assert served.c.get("/v1/review", params={"strategy": "random"}, headers=SAMPLER).json()["next"] is None
    for bad in ({"after": "nonsense"}, {"after": params.get("after", "x"), "offset": 1}):
        r = served.c.get("/v1/review", params=bad, headers=SAMPLER)
        assert r.status_code == 400 and "after" in error_of(r)["message"], r.text
