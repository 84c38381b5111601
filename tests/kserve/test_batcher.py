"""The runtime's dynamic batcher on its own (no model): batch bounds, whole requests, a bounded queue."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from graft.kserve.batcher import Batcher, QueueFullError, drain


def _echo_recorder(batches: list[int], delay_s: float = 0.0) -> Any:
    def fn(items: Sequence[Mapping[str, Any]], headers: Sequence[Mapping[str, Any]]) -> list[Any]:
        batches.append(len(items))
        time.sleep(delay_s)
        return [x["body"] for x in items]

    return fn


def test_concurrent_requests_share_batches_never_above_the_max() -> None:
    batches: list[int] = []

    async def main() -> list[list[Any]]:
        b = Batcher(_echo_recorder(batches, 0.02), max_batch=4, max_delay_s=0.2)
        try:
            return await asyncio.gather(*[b.submit([{"body": i}], [{}]) for i in range(10)])
        finally:
            b.close()

    results = asyncio.run(main())
    assert results == [[i] for i in range(10)]  # each caller gets its own answer back, in order
    assert max(batches) == 4 and all(n <= 4 for n in batches)
    assert sum(batches) == 10 and len(batches) == 3  # 4 + 4 + 2


def test_a_request_is_never_split_and_weight_counts_images() -> None:
    batches: list[int] = []

    async def main() -> None:
        b = Batcher(_echo_recorder(batches), max_batch=4, max_delay_s=0.2)
        try:
            await asyncio.gather(b.submit([{"body": 0}, {"body": 1}, {"body": 2}], [{}] * 3),
                                 b.submit([{"body": 3}, {"body": 4}], [{}] * 2))  # fmt: skip
        finally:
            b.close()

    asyncio.run(main())
    assert batches == [3, 2]  # 3 + 2 > 4: the second request waits for the next batch, whole


def test_a_lone_request_waits_at_most_the_delay() -> None:
    async def main() -> float:
        b = Batcher(_echo_recorder([]), max_batch=8, max_delay_s=0.05)
        t0 = time.perf_counter()
        await b.submit([{"body": 1}], [{}])
        b.close()
        return time.perf_counter() - t0

    assert asyncio.run(main()) < 1.0


def test_a_full_queue_refuses_with_503() -> None:
    gate = threading.Event()

    def blocked(items: Sequence[Mapping[str, Any]], headers: Sequence[Mapping[str, Any]]) -> list[Any]:
        gate.wait(5)
        return [None] * len(items)

    async def main() -> None:
        b = Batcher(blocked, max_batch=1, max_delay_s=0.0, queue_size=2)
        running = asyncio.ensure_future(b.submit([{"body": 0}], [{}]))
        await asyncio.sleep(0.05)  # the first is in the handler; two more fill the queue
        queued = [asyncio.ensure_future(b.submit([{"body": i}], [{}])) for i in (1, 2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError) as e:
            await b.submit([{"body": 3}], [{}])
        assert e.value.status_code == 503
        gate.set()
        await asyncio.gather(running, *queued)
        assert await drain(b, 2.0)
        b.close()

    asyncio.run(main())


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on() -> None:
    calls: list[int] = []

    def flaky(items: Sequence[Mapping[str, Any]], headers: Sequence[Mapping[str, Any]]) -> list[Any]:
        calls.append(len(items))
        if len(calls) == 1:
            raise RuntimeError("backend died")
        return [x["body"] for x in items]

    async def main() -> None:
        b = Batcher(flaky, max_batch=2, max_delay_s=0.0)
        with pytest.raises(RuntimeError, match="backend died"):
            await b.submit([{"body": 1}], [{}])
        assert await b.submit([{"body": 2}], [{}]) == [2]
        b.close()

    asyncio.run(main())
