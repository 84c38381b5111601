"""Indexing captured traffic: the workers' segment files read into SQLite, near-duplicates collapsed.

The inference workers append captures to ``CAPTURE_DIR/<model>/<id>.seg`` (:mod:`graft.core.capture`); this
module reads each segment from where it stopped last time (``capture_segments``), fingerprints each new
image (the same pixel hash and perceptual hash as uploads) and files it as

* ``duplicate`` of a stored sample or of an earlier capture when its pixels are the same or its
  perceptual hash is within :data:`NEAR_DUPLICATE_BITS` (the earlier capture's ``seen`` count grows;
  a queued one answered by an older model version is replaced by the new capture instead), or
* ``queued`` for review otherwise (``unreadable`` when the image cannot be decoded), or
* ``deleted`` at once, its image erased, when it is a copy of a picture an admin erased (:meth:`erase_picture`).

A capture cut short at the end of a segment is being written: it is read next pass, or given up once the
segment has not changed for :data:`INCOMPLETE_GRACE_S`. Captures whose segment the workers pruned to keep
their disk budget are forgotten by :meth:`CaptureIndex.sweep` (rows nobody decided on are deleted, decided ones
marked ``gone``), which also caps the index: the budget bounds the database as it bounds the files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from admin.domain.samples import NEAR_DUPLICATE_BITS
from admin.store.captures import CaptureStore
from admin.store.rows import CaptureRow
from admin.store.samples import SampleStore
from graft.core.capture import (
    INCOMPLETE_GRACE_S,
    SEGMENT_SUFFIX,
    Capture,
    CaptureRecord,
    DamagedSegmentError,
    decode_segment,
    erase_image,
    model_dir,
    segment_names,
)
from graft.core.errors import GraftError
from graft.core.images import Fingerprint, fingerprint

log = logging.getLogger(__name__)

_READ_AT_MOST = 32 * 2**20  # bytes of one segment read in one pass


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
        self._dropped = 0  # times cached capture hashes were dropped: a load read before a drop is stale
        self._warming: set[str] = set()  # models whose hashes the background thread is loading
        # ((samples' max seq, their count) when loaded, hashes): a deleted sample changes the count
        self._samples: tuple[tuple[int, int], _Hashes] | None = None
        # erased pictures (the table's key when read: uploads check it from request threads): by pixels, by hash
        self._erased: tuple[tuple[int, int, int], dict[str, str], _Hashes] | None = None
        self._swept: set[str] = set()  # models whose rows' segments were all checked once

    def folder(self, model_name: str) -> Path:
        return model_dir(self.root, model_name)

    def sync(self, model_name: str, limit: int = 1000) -> int:
        """Index up to ``limit`` new records; the number indexed."""
        with self.lock:
            return self._sync(model_name, limit)

    def warm(self, model_name: str) -> None:
        """Load the model's capture hashes now (a read of every queued capture's hash: seconds at a million
        rows), in the background thread, so that the first page does not pay for it. The read runs without
        holding the index (pages meanwhile show the last committed pass instead of waiting for it)."""
        with self.lock:
            if model_name in self._captures:
                return
            self._warming.add(model_name)
            dropped = self._dropped
        try:
            loaded = _Hashes(self.store.phashes(model_name))
        finally:
            with self.lock:
                self._warming.discard(model_name)
                # A pass that indexed meanwhile loaded its own set (it holds every capture since); a drop since
                # the read means some of these hashes are no longer kept.
                if model_name not in self._captures and dropped == self._dropped:
                    self._captures[model_name] = loaded

    def sync_if_idle(self, model_name: str, limit: int = 200, wait_s: float = 2.0) -> int:
        """:meth:`sync` unless a pass (the background thread's) holds the index longer than ``wait_s``: a page
        waits for the pass in progress (a bounded batch, so usually well under a second), never longer than
        that, then shows what the last committed pass indexed."""
        if not self.lock.acquire(timeout=wait_s):
            return 0
        try:
            if model_name in self._warming:  # indexing now would load the hashes again, on the request's time
                return 0
            return self._sync(model_name, limit)
        finally:
            self.lock.release()

    def _sync(self, model_name: str, limit: int) -> int:
        read_to = self.store.read_to(model_name)
        batch: list[tuple[Capture, tuple[str, int, int], Fingerprint | None]] = []
        progress: dict[str, int] = {}
        for name in self._grown(model_name, read_to):
            if len(batch) >= limit:
                break
            found, stop = self._read_segment(model_name, name, read_to.get(name, 0), limit - len(batch))
            for offset, length, capture in found:  # decoding: outside the database's lock
                batch.append((capture, (name, offset, length), self._fingerprint(capture)))
            if stop != read_to.get(name, 0):
                progress[name] = stop
        if not batch and not progress:  # nothing new: no write transaction, so no wait on another writer
            return 0
        # One transaction per pass: one commit (and fsync) for the lot, not one per capture.
        with self.store.batch():
            for capture, where, fp in batch:
                if capture.record.model_name == model_name:
                    self._index(capture.record, where, fp)
            for name, stop in progress.items():
                self.store.set_read_to(model_name, name, stop)
        if batch:
            log.info("indexed %d new capture(s) of %s", len(batch), model_name)
        return len(batch)

    def _grown(self, model_name: str, read_to: dict[str, int]) -> list[str]:
        """The segments holding bytes past where the index read them, oldest first: one stat per segment (from the
        directory listing) and an open only for those, so that a sync on a request's path costs what arrived, not
        how many segments are kept (opening each of 1,000 segments took most of a review page's time)."""
        grown = []
        try:
            with os.scandir(self.folder(model_name)) as entries:
                for entry in entries:
                    if entry.name.endswith(SEGMENT_SUFFIX) and entry.is_file():
                        with contextlib.suppress(OSError):  # pruned since listed: the sweep forgets it
                            if entry.stat().st_size > read_to.get(entry.name, 0):
                                grown.append(entry.name)
        except OSError:
            return []
        return sorted(grown)

    def _read_segment(self, model_name: str, name: str, start: int, limit: int) -> tuple[list[Any], int]:
        """Whole captures after ``start`` (at most ``limit``) and the offset read up to."""
        path = self.folder(model_name) / name
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size <= start:
                    return [], start
                f.seek(start)
                data = f.read(_READ_AT_MOST)
            found, stop = decode_segment(data)
        except OSError:
            return [], start  # pruned meanwhile: the sweep marks its captures gone
        except DamagedSegmentError as e:
            log.warning("capture segment %s is damaged (%s): the rest of it is skipped", name, e)
            return [], size
        if len(found) > limit:  # the rest next pass
            kept = [(start + offset, length, capture) for offset, length, capture in found[:limit]]
            return kept, kept[-1][0] + kept[-1][1]
        found = [(start + offset, length, capture) for offset, length, capture in found]
        stop += start
        if stop < size == start + len(data) and time.time() - path.stat().st_mtime > INCOMPLETE_GRACE_S:
            log.warning("capture segment %s ends in a capture its writer never finished; skipped", name)
            stop = size
        return found, stop

    def _fingerprint(self, capture: Capture) -> Fingerprint | None:
        try:
            return fingerprint(capture.image, self.max_image_pixels, thumb=False)
        except GraftError as e:
            log.warning("capture %s: image unreadable (%s)", capture.record.id, e)
            return None

    def _index(self, record: CaptureRecord, where: tuple[str, int, int], fp: Fingerprint | None) -> None:
        if fp is None:
            self.store.add(record, where, "unreadable")
            return
        pixels, phash = fp.pixels_sha, fp.phash_hex
        erased = self._erased_of(fp)
        if erased is not None:  # an admin erased this picture: it is not kept again, not even for a moment more
            self.store.add(record, where, "deleted", pixels, phash, duplicate_of=f"erased:{erased}")
            erase_image(self.folder(record.model_name) / where[0], where[1], where[2], record.id)
            return
        sample = self.samples.by_pixels(pixels)
        if sample is not None:
            self.store.add(record, where, "duplicate", pixels, phash, duplicate_of=f"sample:{sample.id}")
            return
        twin = self.store.by_pixels(record.model_name, pixels) or self._capture_hashes(record.model_name).near(fp.phash)
        if twin is not None:
            self._duplicate_of_capture(record, where, twin, pixels, phash, fp.phash)
            return
        near_sample = self._sample_hashes().near(fp.phash)
        if near_sample is not None:
            self.store.add(record, where, "duplicate", pixels, phash, duplicate_of=f"sample:{near_sample}")
            return
        self.store.add(record, where, "queued", pixels, phash)
        self._capture_hashes(record.model_name).add(record.id, fp.phash)

    def _duplicate_of_capture(self, record: CaptureRecord, where: tuple[str, int, int], twin_id: str, pixels: str,
                              phash: str, value: int) -> None:  # fmt: skip
        """Seen before: count it. When the queued entry was answered by another version, this capture
        replaces it, so the queue ranks each picture by what the model in service says of it now."""
        twin = self.store.get(twin_id)
        for _ in range(8):  # a hash cached for an entry replaced since: follow to the current one
            if twin is None or twin.status != "duplicate" or not twin.duplicate_of or ":" in twin.duplicate_of:
                break
            twin_id = twin.duplicate_of
            twin = self.store.get(twin_id)
        if twin is not None and twin.status == "queued" and twin.model_version != record.model_version:
            self.store.add(record, where, "queued", pixels, phash)
            self.store.replace(twin.id, record.id)
            self._capture_hashes(record.model_name).add(record.id, value)
            return
        self.store.add(record, where, "duplicate", pixels, phash, duplicate_of=twin_id)
        self.store.seen_again(twin_id)

    def _capture_hashes(self, model_name: str) -> _Hashes:
        if model_name not in self._captures:
            self._captures[model_name] = _Hashes(self.store.phashes(model_name))
        return self._captures[model_name]

    def _sample_hashes(self) -> _Hashes:
        seen = (self.samples.max_seq(), self.samples.count())
        if self._samples is None or self._samples[0] != seen:
            self._samples = (seen, _Hashes(self.samples.phashes()))
        return self._samples[1]

    def _erased_of(self, fp: Fingerprint) -> str | None:
        """The erasure (its capture id) this picture falls under: the same pixels or a near perceptual hash.
        Safe without the index's lock: the cache is checked against the table's key and swapped whole."""
        key, cache = self.store.erased_key(), self._erased
        if cache is None or cache[0] != key:
            rows = self.store.erased()
            by_pixels = {pixels: cid for cid, pixels, _ in rows if pixels}
            cache = (key, by_pixels, _Hashes([(cid, int(h, 16)) for cid, _, h in rows if h]))
            self._erased = cache
        _, by_pixels, hashes = cache
        return by_pixels.get(fp.pixels_sha) or hashes.near(fp.phash)

    def erasure_of(self, fp: Fingerprint) -> tuple[str, str] | None:
        """(capture id, when) of the erasure an image falls under, by the rule erasure uses (the same pixels or a
        perceptual hash within :data:`NEAR_DUPLICATE_BITS`); None when it falls under none. Only fingerprints of
        erased pictures are kept, never their pixels."""
        cid = self._erased_of(fp)
        return (cid, self.store.erased_at(cid) or "an unknown date") if cid is not None else None

    def erase_picture(self, row: CaptureRow, within: Callable[[], object] = lambda: None) -> list[str]:
        """Erase the image of every kept capture of ``row``'s picture (the same pixels, or a perceptual hash within
        :data:`NEAR_DUPLICATE_BITS`: the copies the queue collapses into one item; any model), mark them deleted,
        and remember the picture so that later captures of it are erased as they are indexed. The ids erased.

        ``within`` runs in the transaction that records the erasure (the review queue sweeps the stored samples
        there): an upload's insert, which re-checks the erasures in its own transaction, commits either before
        it (and the sweep deletes it) or after it (and is refused); never between the two."""
        with self.lock:
            same = {row.id}
            if row.pixels_sha is not None or row.phash is not None:
                kept = self.store.fingerprints()
                same |= {cid for cid, pixels, _ in kept if pixels is not None and pixels == row.pixels_sha}
                hashed = [(cid, int(h, 16)) for cid, _, h in kept if h is not None]
                if row.phash is not None and hashed:
                    values = np.array([h for _, h in hashed], dtype=np.uint64)
                    near = np.bitwise_count(values ^ np.uint64(int(row.phash, 16))) <= NEAR_DUPLICATE_BITS
                    same |= {hashed[i][0] for i in np.flatnonzero(near)}
            for cid in sorted(same):
                copy = self.store.get(cid)
                if copy is not None:
                    erase_image(self.folder(copy.model_name) / copy.image_file, copy.file_offset, copy.file_length,
                                copy.id)  # fmt: skip
            with self.store.batch():
                self.store.add_erased(row.id, row.pixels_sha, row.phash)
                self.store.mark_deleted(sorted(same), row.id)
                within()
            self._erased = None
            self._drop_hashes()
            return sorted(same)

    def forget(self, model_name: str | None = None) -> None:
        """Drop the cached hashes (after captures were deleted, pruned or put back in the queue): one model's,
        or every model's."""
        with self.lock:
            self._drop_hashes(model_name)

    def _drop_hashes(self, model_name: str | None = None) -> None:
        """(Holding the lock.) One model's cached capture hashes, or every model's, to be loaded again."""
        self._dropped += 1
        if model_name is None:
            self._captures.clear()
        else:
            self._captures.pop(model_name, None)

    def sweep(self, model_name: str, keep: int, keep_since: float | None = None) -> int:
        """Forget the captures whose segment the workers pruned (their rows go, decided ones stay marked gone),
        then keep the index to the newest ``keep`` undecided captures; how many were pruned.

        The pruned segments are the ones the index has read (``capture_segments``) that are no longer on disk,
        so a sweep costs what was pruned, not what is kept; the first sweep of a process also checks the
        segments the rows name (a database from before schema 10, or a crash between the two)."""
        # The first sweep's walk of the rows (a second at a million) reads without holding the index: a row
        # indexed meanwhile names a segment the index read, which read_to below lists.
        named = set(self.store.segments(model_name)) if model_name not in self._swept else set()
        with self.lock:
            present = set(segment_names(self.root, model_name))
            known = set(self.store.read_to(model_name)) | named
            self._swept.add(model_name)
            pruned = self.store.prune_segments(model_name, sorted(known - present), keep_since)
            if pruned:
                log.info("%d capture(s) of %s were pruned by the disk budget", pruned, model_name)
            if keep_since is not None:
                self.store.forget_gone(keep_since)
            capped = self.store.cap(keep)
            if capped:
                log.info("the capture index keeps the newest %d captures: %d older row(s) dropped", keep, capped)
            if pruned or capped:
                self._drop_hashes()  # their hashes must not match new captures
            return pruned
