"""Capture: keep a sample of served inputs with what the model answered, for the admin's review queue.

It never fails or noticeably slows a prediction: the request path only draws a random number and puts a
reference on a bounded queue (``put_nowait``); a thread of the worker writes the files. A full queue, a
full disk or an unwritable folder drops the capture and counts it (``graft_captures_total{Outcome}``).
The disk budget is kept by that thread: past it, the oldest captures go first. Format:
:mod:`graft.core.capture`.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from graft.core.capture import RECORD_SUFFIX, CaptureRecord, model_dir, uncertainty
from graft.core.util import write_atomic

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
_PRUNE_EVERY_S = 10.0


def extension(payload: bytes) -> str:
    """The file extension of an encoded image, from its magic bytes (the handler accepted it already)."""
    if payload[:3] == b"\xff\xd8\xff":
        return "jpg"
    if payload[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if payload[:4] == b"RIFF" and payload[8:12] == b"WEBP":
        return "webp"
    if payload[:2] == b"BM":
        return "bmp"
    if payload[:3] == b"GIF":
        return "gif"
    return "bin"


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
        count: Callable[[str], None] = lambda _outcome: None,
        topk: int = 5,
    ):
        self.folder = model_dir(Path(root), model_name)
        self.model_name, self.model_version = model_name, model_version
        self.labels = list(labels)
        self.rate = rate
        self.budget = budget_bytes
        self.count = count  # the metric: stored | dropped_queue | dropped_error
        self.topk = topk
        self.queue: queue.Queue[_Item] = queue.Queue(maxsize=QUEUE_SIZE)
        self._last_prune = 0.0
        self._written = 0  # bytes since the last prune
        self._thread = threading.Thread(target=self._run, name="graft-capture", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the request path
    def offer(self, payload: bytes, probs: Sequence[float], request_id: str) -> None:
        """Maybe keep this input; never blocks, never raises."""
        try:
            if random.random() >= self.rate:
                return
            self.queue.put_nowait(_Item(payload, [float(p) for p in probs], request_id, time.time()))
        except queue.Full:
            self.count("dropped_queue")
        except Exception:  # nothing in capture may fail a prediction
            log.debug("capture offer failed", exc_info=True)

    # ------------------------------------------------------------------ the writer thread
    def _run(self) -> None:
        while True:
            item = self.queue.get()
            try:
                self._write(item)
                self._written += len(item.payload)
                self.count("stored")
            except Exception as e:  # a full disk, a read-only or broken folder: drop, count, go on
                self.count("dropped_error")
                log.warning("capture dropped: %s", e)
            if time.monotonic() - self._last_prune > _PRUNE_EVERY_S or self._written > self.budget // 20:
                self._last_prune, self._written = time.monotonic(), 0
                self._prune()

    def _write(self, item: _Item) -> None:
        capture_id = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
        image = f"{capture_id}.{extension(item.payload)}"
        order = sorted(range(len(item.probs)), key=lambda i: item.probs[i], reverse=True)[: self.topk]
        margin, entropy = uncertainty(item.probs)
        record = CaptureRecord(
            id=capture_id, model_name=self.model_name, model_version=self.model_version, captured_at=item.at,
            request_id=item.request_id, image_file=image, labels=[self.labels[i] for i in order],
            scores=[round(item.probs[i], 6) for i in order], margin=margin, entropy=entropy,
        )  # fmt: skip
        write_atomic(self.folder / image, item.payload, fsync=False)
        write_atomic(self.folder / f"{capture_id}{RECORD_SUFFIX}", record.to_json().encode(), fsync=False)

    def _prune(self) -> None:
        """Oldest captures first, until the folder is under its budget (shared by every worker of the model)."""
        try:
            entries = sorted((e.name, e.stat().st_size) for e in os.scandir(self.folder) if e.is_file())
        except OSError:
            return
        total = sum(size for _, size in entries)
        for name, size in entries:  # ids sort by time; a record and its image share the id
            if total <= self.budget:
                break
            try:
                (self.folder / name).unlink()
            except OSError:
                continue
            total -= size
