"""Indexing captured traffic: the workers' capture folder read into SQLite, near-duplicates collapsed.

The inference workers write ``CAPTURE_DIR/<model>/<id>.cap`` (:mod:`graft.core.capture`); this module reads
the files the index does not have yet, fingerprints each image (the same pixel hash and perceptual hash as
uploads) and files it as

* ``duplicate`` of a stored sample or of an earlier capture when its pixels are the same or its
  perceptual hash is within :data:`NEAR_DUPLICATE_BITS` (the earlier capture's ``seen`` count grows;
  a queued one answered by an older model version is replaced by the new capture instead), or
* ``queued`` for review otherwise (``unreadable`` when the image cannot be decoded).

Workers write concurrently and a file may be complete a little after a later one, so each pass re-lists the
last :data:`_LAG_NS` before the newest indexed id and skips what it knows; an incomplete file is looked at
again until it is :data:`INCOMPLETE_GRACE_S` old. Captures the workers pruned to keep their disk budget are
marked ``gone`` by :meth:`CaptureIndex.sweep`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from admin.domain.samples import NEAR_DUPLICATE_BITS
from admin.store.captures import CaptureStore
from admin.store.samples import SampleStore
from graft.core.capture import (
    INCOMPLETE_GRACE_S,
    Capture,
    CaptureRecord,
    capture_ids,
    capture_path,
    model_dir,
    read_capture,
)
from graft.core.errors import GraftError
from graft.core.images import Fingerprint, fingerprint

log = logging.getLogger(__name__)

_LAG_NS = 60 * 10**9


class _Hashes:
    """Perceptual hashes with ids, matched in one vectorised pass (XOR then popcount)."""

    def __init__(self, pairs: list[tuple[str, int]]):
        self.ids = [i for i, _ in pairs]
        # Grown by doubling: one capture at a time, np.append would copy the whole array each time.
        self._values = np.zeros(max(64, 2 * len(pairs)), dtype=np.uint64)
        self._values[: len(pairs)] = [h for _, h in pairs]

    def add(self, item_id: str, value: int) -> None:
        if len(self.ids) == len(self._values):
            self._values = np.concatenate([self._values, np.zeros_like(self._values)])
        self._values[len(self.ids)] = np.uint64(value)
        self.ids.append(item_id)

    def near(self, value: int) -> str | None:
        if not self.ids:
            return None
        distances = np.bitwise_count(self._values[: len(self.ids)] ^ np.uint64(value))
        best = int(distances.argmin())
        return self.ids[best] if int(distances[best]) <= NEAR_DUPLICATE_BITS else None


class CaptureIndex:
    def __init__(self, store: CaptureStore, samples: SampleStore, root: Path, max_image_pixels: int):
        self.store = store
        self.samples = samples
        self.root = Path(root)
        self.max_image_pixels = max_image_pixels
        self.lock = threading.Lock()
        self._captures: dict[str, _Hashes] = {}  # per model
        self._samples: tuple[int, _Hashes] | None = None  # (samples' max seq when loaded, hashes)
        self._bad: set[str] = set()  # ids whose file could not be read: not re-read every pass

    def folder(self, model_name: str) -> Path:
        return model_dir(self.root, model_name)

    def sync(self, model_name: str, limit: int = 1000) -> int:
        """Index up to ``limit`` new records; the number indexed."""
        with self.lock:
            return self._sync(model_name, limit)

    def _sync(self, model_name: str, limit: int) -> int:
        latest = self.store.latest_id(model_name)
        since = f"{max(0, int(latest[:20]) - _LAG_NS):020d}" if latest else ""
        known = self.store.known_since(model_name, since)
        batch: list[tuple[CaptureRecord, Fingerprint | None]] = []
        for capture_id in capture_ids(self.root, model_name, after=since):
            if capture_id in known or capture_id in self._bad:
                continue
            path = capture_path(self.root, model_name, capture_id)
            capture = read_capture(path)
            if capture is None or capture.record.model_name != model_name:
                if capture is not None or _given_up(path):
                    self._bad.add(capture_id)
                    log.warning("capture file %s is damaged, inconsistent or was never completed; skipped", path.name)
                continue  # else: being written, looked at again next pass
            batch.append((capture.record, self._fingerprint(capture)))  # decoding: outside the database's lock
            if len(batch) >= limit:
                break
        # One transaction per pass: one commit (and fsync) for the lot, not two per capture.
        with self.store.batch():
            for record, fp in batch:
                self._index(record, fp)
        if batch:
            log.info("indexed %d new capture(s) of %s", len(batch), model_name)
        return len(batch)

    def _fingerprint(self, capture: Capture) -> Fingerprint | None:
        try:
            return fingerprint(capture.image, self.max_image_pixels)
        except GraftError as e:
            log.warning("capture %s: image unreadable (%s)", capture.record.id, e)
            return None

    def _index(self, record: CaptureRecord, fp: Fingerprint | None) -> None:
        if fp is None:
            self.store.add(record, "unreadable")
            return
        pixels, phash = fp.pixels_sha, fp.phash_hex
        sample = self.samples.by_pixels(pixels)
        if sample is not None:
            self.store.add(record, "duplicate", pixels, phash, duplicate_of=f"sample:{sample.id}")
            return
        twin = self.store.by_pixels(record.model_name, pixels) or self._capture_hashes(record.model_name).near(fp.phash)
        if twin is not None:
            self._duplicate_of_capture(record, twin, pixels, phash, fp.phash)
            return
        near_sample = self._sample_hashes().near(fp.phash)
        if near_sample is not None:
            self.store.add(record, "duplicate", pixels, phash, duplicate_of=f"sample:{near_sample}")
            return
        self.store.add(record, "queued", pixels, phash)
        self._capture_hashes(record.model_name).add(record.id, fp.phash)

    def _duplicate_of_capture(self, record: CaptureRecord, twin_id: str, pixels: str, phash: str, value: int) -> None:
        """Seen before: count it. When the queued entry was answered by another version, this capture
        replaces it, so the queue ranks each picture by what the model in service says of it now."""
        twin = self.store.get(twin_id)
        for _ in range(8):  # a hash cached for an entry replaced since: follow to the current one
            if twin is None or twin.status != "duplicate" or not twin.duplicate_of or ":" in twin.duplicate_of:
                break
            twin_id = twin.duplicate_of
            twin = self.store.get(twin_id)
        if twin is not None and twin.status == "queued" and twin.model_version != record.model_version:
            self.store.add(record, "queued", pixels, phash)
            self.store.replace(twin.id, record.id)
            self._capture_hashes(record.model_name).add(record.id, value)
            return
        self.store.add(record, "duplicate", pixels, phash, duplicate_of=twin_id)
        self.store.seen_again(twin_id)

    def _capture_hashes(self, model_name: str) -> _Hashes:
        if model_name not in self._captures:
            self._captures[model_name] = _Hashes(self.store.phashes(model_name))
        return self._captures[model_name]

    def _sample_hashes(self) -> _Hashes:
        seq = self.samples.max_seq()
        if self._samples is None or self._samples[0] != seq:
            self._samples = (seq, _Hashes(self.samples.phashes()))
        return self._samples[1]

    def forget(self, model_name: str) -> None:
        """Drop the cached hashes (after captures were deleted or pruned)."""
        with self.lock:
            self._captures.pop(model_name, None)

    def sweep(self, model_name: str) -> int:
        """Mark ``gone`` the captures whose image the workers pruned; how many."""
        try:
            present = {e.name for e in os.scandir(self.folder(model_name))}
        except OSError:
            present = set()
        gone = [cid for cid, image in self.store.live_files(model_name) if image not in present]
        if gone:
            self.store.mark_gone(gone)
            self.forget(model_name)
            log.info("%d capture(s) of %s were pruned by the disk budget", len(gone), model_name)
        return len(gone)


def _given_up(path: Path) -> bool:
    """An unreadable capture file old enough that its writer is not coming back (or that is gone)."""
    try:
        return time.time() - path.stat().st_mtime > INCOMPLETE_GRACE_S
    except OSError:
        return True
