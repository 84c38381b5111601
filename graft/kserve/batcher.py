"""Dynamic batching inside the model: concurrent requests share one handler call.

KServe's Python server calls the model once per request and its batcher sidecar speaks v1 only, so
the queue lives here: a bounded :class:`asyncio.Queue` of pending requests; one consumer takes the
first, then waits up to ``max_delay_s`` for more until ``max_batch`` images are gathered, and runs
the (synchronous, not thread-safe) handler on one worker thread. A full queue refuses at once (503)
instead of letting latency grow without bound, as TorchServe's job queue does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from graft.core.errors import GraftError

log = logging.getLogger(__name__)

# items, headers (one per item) -> one result per item
BatchFn = Callable[[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]], list[Any]]


class QueueFullError(GraftError):
    status_code = 503
    reason = "queue_full"


@dataclass
class _Pending:
    items: list[Mapping[str, Any]]
    headers: list[Mapping[str, Any]]
    future: asyncio.Future[list[Any]]
    weight: int = 1  # images this request carries (a KServe v1 body holds several in one item)
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Gathers concurrent requests (each with one or more items) into batches of at most ``max_batch`` items.

    A request larger than ``max_batch`` runs as a batch of its own (its instances cap is the handler's).
    """

    def __init__(self, fn: BatchFn, max_batch: int, max_delay_s: float, queue_size: int = 100) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.fn = fn
        self.max_batch = max_batch
        self.max_delay_s = max(0.0, max_delay_s)
        self.queue_size = queue_size
        self.batch_sizes: list[int] = []  # recent batch sizes (items), for tests and logs; bounded below
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task[None] | None = None
        self._carry: _Pending | None = None
        self._running = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="graft-batch")

    def _ensure_started(self) -> asyncio.Queue[_Pending]:
        # Created on first use: the queue and task belong to the loop that serves requests.
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=self.queue_size)
            self._task = asyncio.get_running_loop().create_task(self._run(), name="graft-batcher")
        return self._queue

    async def submit(self, items: Sequence[Mapping[str, Any]], headers: Sequence[Mapping[str, Any]],
                     weight: int | None = None) -> list[Any]:
        """Queue ``items`` (``weight`` images, default one per item); their results once their batch ran."""
        queue = self._ensure_started()
        future = asyncio.get_running_loop().create_future()
        pending = _Pending(list(items), list(headers), future, max(1, weight or len(items)))
        try:
            queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise QueueFullError(
                f"{self.queue_size} requests are already waiting for this model: retry later, or add replicas"
            ) from None
        return await pending.future

    async def _gather(self, queue: asyncio.Queue[_Pending]) -> list[_Pending]:
        first = self._carry or await queue.get()
        self._carry = None
        self._running = 1  # held here while more arrive: not idle
        batch, size = [first], first.weight
        deadline = time.perf_counter() + self.max_delay_s
        while size < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                nxt = queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(queue.get(), remaining)
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if size + nxt.weight > self.max_batch:
                self._carry = nxt  # starts the next batch: never split a request, never exceed the max
                break
            batch.append(nxt)
            size += nxt.weight
        return batch

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather(self._queue)
            items = [x for p in batch for x in p.items]
            headers = [h for p in batch for h in p.headers]
            self.batch_sizes = [*self.batch_sizes[-999:], sum(p.weight for p in batch)]
            self._running = len(batch)
            try:
                results = await loop.run_in_executor(self._pool, self.fn, items, headers)
            except Exception as e:  # the handler answers per item; this is a bug or a dead backend
                log.exception("batch of %d item(s) failed", len(items))
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            finally:
                self._running = 0
            for p in batch:
                mine, results = results[: len(p.items)], results[len(p.items) :]
                if not p.future.done():  # the client may have gone away
                    p.future.set_result(mine)

    @property
    def idle(self) -> bool:
        return self._running == 0 and self._carry is None and (self._queue is None or self._queue.empty())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


async def drain(batcher: Batcher, timeout_s: float) -> bool:
    """Wait until ``batcher`` has nothing queued or running (True), or ``timeout_s`` passed (False)."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if batcher.idle:
            return True
        await asyncio.sleep(0.05)
    return batcher.idle
