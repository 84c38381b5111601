"""Capture: keep a sample of served inputs with what the model answered, for the admin's review queue.

It never fails or noticeably slows a prediction: the request path only draws a random number and puts a
reference on a queue bounded in items and in bytes (``put_nowait``); a thread of the worker appends it to the
worker's segment file. A full queue, a full disk or an unwritable folder drops the capture and counts it
(``graft_captures_total{Outcome}``, emitted at most once a second: each emission is a line the frontend
parses). The disk budget is kept by that thread: past it, the oldest segments go first. Format:
:mod:`graft.core.capture`.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import queue
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from graft.core.capture import (
    SEGMENT_SUFFIX,
    CaptureRecord,
    encode,
    image_type,
    model_dir,
    no_capture_key,
    segment_bytes,
    uncertainty,
)

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
# Bytes of images waiting for the writer thread, whatever their count: 256 captures of 4 MiB would hold 1 GiB in a
# worker while a slow disk catches up. Past it a capture is dropped (and counted), like a full queue.
QUEUE_BYTES = 32 * 2**20
# The folder is listed (to keep the budget) when this writer's own count says it is over, and at least this
# often: the other workers of the model write to the same folder.
_RESCAN_EVERY_S = 30.0
_PRUNE_TO = 0.9  # of the budget: room for a while before the next listing
_FLUSH_EVERY_S = 1.0  # counts are summed and emitted at most this often under load,
_IDLE_FLUSH_S = 0.05  # and as soon as the queue has been empty this long
_KEY_REREAD_S = 5.0  # the no-capture key file is read again at most this often (it appears when the admin starts)


@dataclass(frozen=True)
class _Item:
    payload: bytes
    probs: list[float]
    request_id: str
    at: float


class CaptureWriter:
    def __init__(
        self,
        root: Path,
        model_name: str,
        model_version: str,
        labels: Sequence[str],
        rate: float,
        budget_bytes: int,
        count: Callable[[str, int], None] = lambda _outcome, _n: None,
        topk: int = 5,
    ):
        self.root = Path(root)
        self.folder = model_dir(self.root, model_name)
        self.model_name, self.model_version = model_name, model_version
        self.labels = list(labels)
        self.rate = rate
        self.budget = budget_bytes
        self.count = count  # the metric (outcome, how many): stored | dropped_queue | dropped_error
        self._pending: Counter[str] = Counter()
        self._pending_lock = threading.Lock()
        self._flushed_at = time.monotonic()
        self._random = random.Random(secrets.randbits(64))  # ids need to be unique, not secret
        self.topk = topk
        self.queue: queue.Queue[_Item] = queue.Queue(maxsize=QUEUE_SIZE)
        self.queued_bytes = 0  # images on the queue (kept by offer and the writer thread, under the lock)
        self._queued_lock = threading.Lock()
        self._used: int | None = None  # the folder's bytes as of the last listing, plus what this writer added
        self._segment: BinaryIO | None = None  # this worker's open segment, its path and size
        self._segment_path: Path | None = None
        self._segment_size = 0
        self._segment_limit = segment_bytes(budget_bytes)
        self._listed_at = 0.0
        self._key: str | None = None  # the admin's no-capture key, read from the capture folder
        self._key_read_at = -_KEY_REREAD_S
        self._thread = threading.Thread(target=self._run, name="graft-capture", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the request path
    def offer(self, payload: bytes, probs: Sequence[float], request_id: str) -> None:
        """Maybe keep this input; never blocks, never raises."""
        try:
            if random.random() >= self.rate:
                return
            with self._queued_lock:  # a few instructions: the request path never waits on the writer
                if self.queued_bytes + len(payload) > QUEUE_BYTES:
                    raise queue.Full
                self.queued_bytes += len(payload)
            try:
                self.queue.put_nowait(_Item(payload, [float(p) for p in probs], request_id, time.time()))
            except queue.Full:
                self._dequeued(len(payload))
                raise
        except queue.Full:
            self._tally("dropped_queue")
        except Exception:  # nothing in capture may fail a prediction
            log.debug("capture offer failed", exc_info=True)

    def exempt(self, header: str | None) -> bool:
        """Whether a request is the admin's own (a smoke test or a replay): its ``X-Graft-No-Capture`` header
        carries the key in the capture folder, which the admin wrote and no inference client can read. Any other
        value is ignored, so a client cannot keep its traffic out of drift and review."""
        if not header:
            return False
        if (self._key is None or not hmac.compare_digest(header.encode(), self._key.encode())) \
                and time.monotonic() - self._key_read_at > _KEY_REREAD_S:  # fmt: skip
            self._key_read_at = time.monotonic()
            self._key = no_capture_key(self.root)
        return self._key is not None and hmac.compare_digest(header.encode(), self._key.encode())

    # ------------------------------------------------------------------ the writer thread
    def _run(self) -> None:
        while True:
            try:  # counts wait for a pause in the traffic (or _FLUSH_EVERY_S), nothing waits for counts
                item = self.queue.get(timeout=_IDLE_FLUSH_S if self._pending else None)
            except queue.Empty:
                self._flush()
                continue
            try:
                written = self._write(item)
                self._tally("stored")
            except Exception as e:  # a full disk, a read-only or broken folder: drop, count, go on
                self._tally("dropped_error")
                log.warning("capture dropped: %s", e)
                written = 0
            finally:
                self._dequeued(len(item.payload))
            if time.monotonic() - self._flushed_at > _FLUSH_EVERY_S:
                self._flush()
            if self._used is not None:
                self._used += written
            if self._used is None or self._used > self.budget or time.monotonic() - self._listed_at > _RESCAN_EVERY_S:
                self._prune()

    def _dequeued(self, size: int) -> None:
        with self._queued_lock:
            self.queued_bytes -= size

    def _tally(self, outcome: str) -> None:
        with self._pending_lock:
            self._pending[outcome] += 1

    def _flush(self) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, Counter()
            self._flushed_at = time.monotonic()
        for outcome, n in pending.items():
            try:
                self.count(outcome, n)
            except Exception:  # a metrics hiccup must not stop the writer
                log.debug("capture count failed", exc_info=True)

    def _write(self, item: _Item) -> int:
        """Append the capture to this worker's segment (see :mod:`graft.core.capture`); the bytes written."""
        capture_id = f"{time.time_ns():020d}-{self._random.getrandbits(32):08x}"
        order = sorted(range(len(item.probs)), key=lambda i: item.probs[i], reverse=True)[: self.topk]
        margin, entropy = uncertainty(item.probs)
        record = CaptureRecord(
            id=capture_id, model_name=self.model_name, model_version=self.model_version, captured_at=item.at,
            request_id=item.request_id, image_type=image_type(item.payload), image_bytes=len(item.payload),
            labels=[self.labels[i] for i in order], scores=[round(item.probs[i], 6) for i in order],
            margin=margin, entropy=entropy,
        )  # fmt: skip
        data = encode(record, item.payload)
        segment = self._current_segment(capture_id, len(data))
        try:
            segment.write(data)
            segment.flush()  # whole captures reach the file as they come: the admin reads it meanwhile
        except OSError:
            self._close_segment()
            raise
        self._segment_size += len(data)
        return len(data)

    def _current_segment(self, capture_id: str, size: int) -> BinaryIO:
        """The open segment, or a new one: when there is none, when this capture would take it past its
        size, or when it is no longer there (pruned by another worker's budget, or the folder replaced)."""
        if self._segment is not None and self._segment_path is not None:
            fits = self._segment_size == 0 or self._segment_size + size <= self._segment_limit
            if fits and os.path.isfile(self._segment_path):  # a stat, not a create: cheap
                return self._segment
            self._close_segment()
        path = self.folder / f"{capture_id}{SEGMENT_SUFFIX}"
        try:
            f = open(path, "xb")  # noqa: SIM115 - kept open, closed by _close_segment
        except FileNotFoundError:  # the first capture, or the folder was removed
            self.folder.mkdir(parents=True, exist_ok=True)
            f = open(path, "xb")  # noqa: SIM115
        self._segment, self._segment_path, self._segment_size = f, path, 0
        return f

    def _close_segment(self) -> None:
        if self._segment is not None:
            with contextlib.suppress(OSError):
                self._segment.close()
        self._segment, self._segment_path, self._segment_size = None, None, 0

    def _prune(self) -> None:
        """Oldest segments first, until the folder is under its budget (shared by every worker of the model).

        Pruned to a little under the budget, so that the next listing waits until this writer has added
        a tenth of it (or until the periodic look at what the other workers wrote).
        """
        self._listed_at = time.monotonic()
        try:
            with os.scandir(self.folder) as it:
                entries = sorted((e.name, e.stat().st_size) for e in it if e.is_file())
        except OSError:
            return
        total = sum(size for _, size in entries)
        if total > self.budget:
            target = int(self.budget * _PRUNE_TO)
            for name, size in entries:  # names start with the time: oldest first
                if total <= target:
                    break
                if self._segment_path is not None and name == self._segment_path.name:
                    continue  # this writer's own open segment
                try:
                    (self.folder / name).unlink()
                except OSError:
                    continue
                total -= size
        self._used = total
