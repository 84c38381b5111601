"""Indexing captured traffic: the workers' capture folder read into SQLite, near-duplicates collapsed.

The inference workers write ``CAPTURE_DIR/<model>/<id>.<ext>`` and then ``<id>.json``
(:mod:`graft.core.capture`); this module reads the records the index does not have yet, fingerprints
each image (the same pixel hash and perceptual hash as uploads) and files it as

* ``duplicate`` of a stored sample or of an earlier capture when its pixels are the same or its
  perceptual hash is within :data:`NEAR_DUPLICATE_BITS` (the earlier capture's ``seen`` count grows;
  a queued one answered by an older model version is replaced by the new capture instead), or
* ``queued`` for review otherwise (``unreadable`` when the file cannot be decoded).

Workers write concurrently and a record may land a little after a later one, so each pass re-lists the
last :data:`_LAG_NS` before the newest indexed id and skips what it knows. Captures the workers pruned
to keep their disk budget are marked ``gone`` by :meth:`CaptureIndex.sweep`.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

from admin.domain.samples import NEAR_DUPLICATE_BITS
from admin.store.captures import CaptureStore
from admin.store.samples import SampleStore
from graft.core.capture import CaptureRecord, list_records, model_dir, read_record
from graft.core.errors import GraftError
from graft.core.images import fingerprint

log = logging.getLogger(__name__)

_LAG_NS = 60 * 10**9


class _Hashes:
    """Perceptual hashes with ids, matched in one vectorised pass (XOR then popcount)."""

    def __init__(self, pairs: list[tuple[str, int]]):
        self.ids = [i for i, _ in pairs]
        self.values = np.array([h for _, h in pairs], dtype=np.uint64)

    def add(self, item_id: str, value: int) -> None:
        self.ids.append(item_id)
        self.values = np.append(self.values, np.uint64(value))

    def near(self, value: int) -> str | None:
        if not self.ids:
            return None
        distances = np.bitwise_count(self.values ^ np.uint64(value))
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
        self._bad: set[str] = set()  # record files that could not be read: not re-read every pass

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
        n = 0
        for path in list_records(self.root, model_name, after=since):
            capture_id = path.name.rsplit(".", 1)[0]
            if capture_id in known or str(path) in self._bad:
                continue
            record = read_record(path)
            if record is None or record.id != capture_id or record.model_name != model_name:
                self._bad.add(str(path))
                log.warning("capture record %s is unreadable or inconsistent; skipped", path.name)
                continue
            self._index(record)
            n += 1
            if n >= limit:
                break
        if n:
            log.info("indexed %d new capture(s) of %s", n, model_name)
        return n

    def _index(self, record: CaptureRecord) -> None:
        try:
            data = (self.folder(record.model_name) / record.image_file).read_bytes()
            fp = fingerprint(data, self.max_image_pixels)
        except (OSError, GraftError) as e:
            log.warning("capture %s: image unreadable (%s)", record.id, e)
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
