"""``Client.review_items`` walks the real admin's review queue over HTTP by its ``next`` cursor: captures that
arrive during the walk and decisions taken on what it returned neither repeat nor skip a capture."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import httpx

from graft.client import Client
from tests.admin import test_review
from tests.admin.test_review import Served
from tests.support.auth import SAMPLES_TOKEN
from tests.support.images import photo
from tests.support.waiting import wait_for

served = test_review.served  # the real admin, and a capture writer standing for the inference workers

# P(ants) of each capture; the margin is |2p - 1|, so the queue's order (smallest margin first) is known.
FIRST = [0.9, 0.55, 0.7, 0.99, 0.6, 0.8, 0.65]


def _client(served: Served, transport: httpx.BaseTransport | None = None) -> Client:
    assert served.server is not None
    return Client(served.server.url, SAMPLES_TOKEN, transport=transport)


def _indexed(served: Served, ids: Iterable[str]) -> None:
    """Wait until these are queued (``Served.capture`` already waits for the index; this also says they are
    in the queue, not duplicates, before a walk counts them)."""
    want = set(ids)
    wait_for(lambda: want <= {i["id"] for i in served.queue(limit=100)}, 10, what="the captures to be queued")


def test_a_walk_returns_each_capture_once_while_captures_arrive_and_are_decided(served: Served) -> None:
    ids = {p: served.capture(photo(seed), p) for seed, p in enumerate(FIRST)}
    _indexed(served, ids.values())
    walked: list[str] = []
    with _client(served) as c:
        for item in c.review_items(page_size=2):
            walked.append(item["id"])
            if len(walked) == 2:  # between pages: one arrives ahead of the cursor, one behind it
                ids[0.5] = served.capture(photo(50), 0.5)
                ids[0.95] = served.capture(photo(51), 0.95)
                _indexed(served, [ids[0.5], ids[0.95]])
            if len(walked) in (3, 4):  # and the reviewer decides what it was given, as it goes
                c.decide(item["id"], skip=True)
        left = [i["id"] for i in c.review_items(page_size=2)]
    order = [0.55, 0.6, 0.65, 0.7, 0.8, 0.9, 0.95, 0.99]  # by margin, without the one that arrived ahead (0.5)
    assert walked == [ids[p] for p in order], "each capture once, in the queue's order, nothing skipped"
    assert len(walked) == len(set(walked))
    assert left == [ids[p] for p in [0.5, *order] if p not in (0.65, 0.7)], "the decided two left the queue"


class _OlderAdmin(httpx.BaseTransport):
    """The real admin's answers without the cursor, as an admin from before ``next`` answers."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.queries: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/review":
            self.queries.append(str(request.url.query, "ascii"))
        r = self.inner.handle_request(request)
        if request.url.path != "/v1/review":
            return r
        r.read()
        body: dict[str, Any] = json.loads(r.content)
        body.pop("next")
        return httpx.Response(r.status_code, json=body)

    def close(self) -> None:
        self.inner.close()


def test_an_admin_without_the_cursor_is_paged_by_offset(served: Served) -> None:
    ids = {p: served.capture(photo(seed), p) for seed, p in enumerate(FIRST)}
    _indexed(served, ids.values())
    older = _OlderAdmin()
    with _client(served, older) as c:
        walked = [i["id"] for i in c.review_items(page_size=3)]
    assert walked == [ids[p] for p in sorted(FIRST, key=lambda p: abs(2 * p - 1))]
    assert [q.split("&")[-1] for q in older.queries] == ["status=queued", "offset=3", "offset=6"]
