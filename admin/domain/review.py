"""The review queue: captured inputs a person labels, skips or rejects, most uncertain first.

A label goes through the same intake as an upload (label rules, dedupe, split by pixels, all checks), so
a reviewed capture is an ordinary sample from then on; a rejection ("none of these classes") is counted
and kept out of training; a skip only hides the item. Listing never decodes an image: the index did.
Every decision records who made it (the token's role) in the capture and in the audit trail, which is what
lets it be undone (admin/domain/undo.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from admin.domain.captures import CaptureIndex
from admin.domain.samples import NEAR_DUPLICATE_BITS, Upload
from admin.store.audit import AuditStore
from admin.store.captures import CaptureStore, Strategy, cursor_of
from admin.store.rows import Actor, CaptureRow, CaptureStatus, SampleMeta, StoredSample
from graft.core.capture import Capture, read_at, valid_id
from graft.core.errors import ConflictError, GoneError, NotFoundError

log = logging.getLogger(__name__)



class AddSamples(Protocol):
    """The intake as the service runs it (admin/domain/service.py: ``AdminService.add_samples``)."""

    def __call__(self, uploads: Sequence[Upload], labels: Sequence[str], actor: Actor, *, new_label: bool = False,
                 audit: bool = True) -> list[StoredSample]: ...  # fmt: skip

_REVIEWABLE: tuple[CaptureStatus, ...] = ("queued", "skipped", "rejected")


@dataclass(frozen=True)
class Erasure:
    captures: list[str]  # capture ids whose image was erased
    samples: list[SampleMeta]  # stored samples of the picture, deleted
    sample_files: str | None  # what became of their files ("deleted", or why they are kept for now); None: no samples
    audit_id: int | None


@dataclass(frozen=True)
class ReviewStats:
    captured: int
    by_status: dict[str, int]
    by_predicted: dict[str, dict[str, int]]


class ReviewQueue:
    def __init__(self, store: CaptureStore, index: CaptureIndex, add_samples: AddSamples,
                 audit: AuditStore | None = None):  # fmt: skip
        self.store = store
        self.index = index
        self.add_samples = add_samples
        self.audit = audit
        # The labels whose sample counts an erasure changed (the service refreshes its gauges).
        self.on_samples_removed: Callable[[list[str]], None] = lambda labels: None
        self.on_files_removed: Callable[[Sequence[Path]], None] = lambda paths: None  # see Corrections

    def _record(self, actor: Actor, action: str, capture_id: str, **detail: Any) -> int | None:
        return self.audit.record(actor, action, capture_id, **detail) if self.audit is not None else None

    def items(self, model_name: str, strategy: Strategy, limit: int, status: CaptureStatus = "queued",
              offset: int = 0) -> list[CaptureRow]:  # fmt: skip
        """A page of the queue, fresh captures indexed first (unless the background pass is at it)."""
        return self.page(model_name, strategy, limit, status, offset)[0]

    def page(self, model_name: str, strategy: Strategy, limit: int, status: CaptureStatus = "queued",
             offset: int = 0, after: str | None = None) -> tuple[list[CaptureRow], str | None]:  # fmt: skip
        """:meth:`items`, from ``offset`` or after the cursor ``after``, and the cursor of the next page (None when
        this one is the last, or for the random strategy, which has no order to continue)."""
        self.index.sync_if_idle(model_name, limit=200)
        rows = self.store.review(model_name, strategy, limit, status, offset, after)
        out = []
        for row in rows:
            if self.capture_path(row).is_file():
                out.append(row)
            else:  # pruned by the workers' disk budget since it was indexed
                self.store.drop_pruned([row.id])
        # From the last row read, kept or not: a page thinned by pruning still continues where it stopped.
        more = strategy != "random" and len(rows) == limit
        return out, cursor_of(rows[-1], strategy) if more else None

    def get(self, capture_id: str, model_name: str | None = None) -> CaptureRow:
        row = self.store.get(capture_id) if valid_id(capture_id) else None
        if row is None and model_name is not None and valid_id(capture_id):
            self.index.sync(model_name, limit=200)  # captured a moment ago, not indexed yet
            row = self.store.get(capture_id)
        if row is None:
            raise NotFoundError(f"no capture {capture_id!r}: GET /v1/review lists the queue")
        if row.status in ("deleted", "gone", "unreadable"):
            raise GoneError(f"capture {capture_id} is {row.status}: its image is no longer kept")
        return row

    def capture_path(self, row: CaptureRow) -> Path:
        """The segment file the capture is in."""
        return self.index.folder(row.model_name) / row.image_file

    def _read(self, row: CaptureRow) -> Capture | None:
        capture = read_at(self.capture_path(row), row.file_offset, row.file_length)
        return capture if capture is not None and capture.record.id == row.id else None

    def image_bytes(self, row: CaptureRow) -> bytes:
        """The captured image as the client sent it; OSError when its segment is gone or damaged."""
        capture = self._read(row)
        if capture is None:
            raise FileNotFoundError(f"capture {row.id}: not readable in {row.image_file}")
        return capture.image

    def image(self, capture_id: str, model_name: str | None = None) -> tuple[Capture, CaptureRow]:
        row = self.get(capture_id, model_name)
        capture = self._read(row)
        if capture is None:
            self.store.drop_pruned([row.id])
            raise GoneError(f"capture {capture_id}'s image was pruned by the capture disk budget")
        return capture, row

    def label(self, capture_id: str, label: str, actor: Actor, model_name: str | None = None, *,
              new_label: bool = False) -> StoredSample:  # fmt: skip
        """Store the capture as a sample of ``label`` through the upload intake (same rules, same split)."""
        capture, row = self.image(capture_id, model_name)
        if row.status == "labelled":
            raise ConflictError(f"capture {capture_id} is already sample {row.sample_id} labelled {row.label!r}; "
                                f"POST /v1/review/{capture_id}/undo takes the decision back")  # fmt: skip
        if row.status == "duplicate":
            raise ConflictError(f"capture {capture_id} is a near-duplicate of {row.duplicate_of}: label that one")
        name = f"capture-{row.id}.{capture.record.image_type}"
        (stored,) = self.add_samples([Upload(name, capture.image)], [label], actor, new_label=new_label, audit=False)
        self.store.set_status(row.id, "labelled", label=stored.label, sample_id=stored.id, reviewed_by=actor,
                              created_sample=int(not stored.duplicate))  # fmt: skip
        self._record(actor, "review.label", row.id, label=stored.label, sample=stored.id, split=stored.split,
                     created_sample=not stored.duplicate)  # fmt: skip
        log.info("capture %s labelled %r: sample %s (%s)", row.id, stored.label, stored.id, stored.split)
        return stored

    def decide(self, capture_id: str, status: CaptureStatus, model_name: str | None = None,
               actor: Actor = "admin") -> CaptureRow:  # fmt: skip
        """Skip (hide) or reject (none of the classes) an item that is not labelled yet."""
        row = self.get(capture_id, model_name)
        if row.status not in _REVIEWABLE:
            raise ConflictError(f"capture {capture_id} is {row.status}; only unlabelled captures can be {status}")
        self.store.set_status(row.id, status, reviewed_by=actor)
        self._record(actor, "review.skip" if status == "skipped" else "review.reject", row.id, before=row.status)
        return self.get(capture_id)

    def delete(self, capture_id: str, actor: Actor = "admin") -> Erasure:
        """Erase the picture everywhere: this capture's image and every other kept copy of it (exact and near
        duplicates, any model), every later capture of it as it is indexed, and every stored sample of it (the same
        pixels or a near-duplicate: a label decision or an upload copied it into the samples). Capture rows stay,
        marked deleted, so counts and drift keep them; replay and review never see them again. What was removed."""
        row = self.store.get(capture_id) if valid_id(capture_id) else None
        if row is None:
            raise NotFoundError(f"no capture {capture_id!r}")
        samples: list[SampleMeta] = []
        linked: dict[str, list[str]] = {}

        def sweep_samples() -> None:
            """In the erasure's transaction: an upload of the picture is stored before it (and deleted here) or
            refused after it (the intake re-checks the erasures in its insert's transaction)."""
            samples.extend(self.index.samples.remove_picture(row.pixels_sha, row.phash, NEAR_DUPLICATE_BITS))
            linked.update({s.id: self.store.labelled_as(s.id) for s in samples})
            for sample in samples:
                self._record(actor, "sample.delete", sample.id, label=sample.label, split=sample.split,
                             uploader=sample.uploader, via=f"review.erase of capture {row.id}")  # fmt: skip

        erased = self.index.erase_picture(row, within=sweep_samples)
        # Outside the transaction: erasing takes the index's lock, and the indexing thread takes it before the
        # database's. A capture labelled as one of the samples is a copy of the picture too.
        for cid in sorted({c for ids in linked.values() for c in ids} - set(erased)):
            if (copy := self.store.get(cid)) is not None:
                erased = sorted(set(erased) | set(self.index.erase_picture(copy)))
        for sample in samples:
            self.store.release_sample(sample.id)  # captures filed as its near-duplicates lead their own item again
        audit_id = self._record(actor, "review.erase", row.id, captures=erased, samples=[s.id for s in samples])
        files = None
        if samples:
            self.index.forget()  # cached hashes of samples changed
            self.on_samples_removed([s.label for s in samples])
            removed, active = self.index.samples.sweep_trash()
            files = f"kept until job {active} ends (it is reading them)" if active is not None else "deleted"
            if removed:
                self.on_files_removed(removed)
            log.info("capture %s erased with %d stored sample(s) of the same picture: %s", row.id, len(samples),
                     ", ".join(s.id for s in samples))  # fmt: skip
        return Erasure(erased, samples, files, audit_id)

    def stats(self, model_name: str) -> ReviewStats:
        self.index.sync_if_idle(model_name, limit=200)
        by_predicted = self.store.counts(model_name)
        by_status: dict[str, int] = {}
        for counts in by_predicted.values():
            for status, n in counts.items():
                by_status[status] = by_status.get(status, 0) + n
        return ReviewStats(sum(by_status.values()), by_status, by_predicted)
