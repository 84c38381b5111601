"""Undoing review decisions: a labelled, skipped or rejected capture goes back to the queue.

Undoing a label decision also removes the sample it created, unless that sample is used elsewhere: it was
stored before the decision (the decision found a duplicate), or another capture's decision is that sample
too. The samples token may undo only decisions made with the samples token, and not one that put a sample
in the holdout (the rules of admin/domain/corrections.py). Several undos are checked first and applied in
one transaction: all of them happen, or none.
"""

from __future__ import annotations

from dataclasses import dataclass

from admin.domain.corrections import Corrections
from admin.domain.review import ReviewQueue
from admin.store.audit import AuditStore
from admin.store.db import Database
from admin.store.rows import Actor, CaptureRow, SampleMeta
from graft.core.capture import valid_id
from graft.core.errors import ConflictError, NotFoundError, PermissionDeniedError

_DECIDED = ("labelled", "skipped", "rejected")


@dataclass(frozen=True)
class Undone:
    capture: CaptureRow  # as it is now: queued
    decision: str  # what was undone: labelled | skipped | rejected
    label: str | None
    sample_removed: str | None  # the sample the decision created, now deleted
    sample_kept: str | None  # a sample the decision did not create, or that another capture uses
    audit_id: int


@dataclass(frozen=True)
class _Plan:
    row: CaptureRow
    remove: SampleMeta | None


class ReviewUndo:
    def __init__(self, db: Database, queue: ReviewQueue, corrections: Corrections, audit: AuditStore):
        self.db = db
        self.queue = queue
        self.corrections = corrections
        self.audit = audit

    def undo(self, capture_id: str, actor: Actor) -> Undone:
        row = self.queue.store.get(capture_id) if valid_id(capture_id) else None
        if row is None:
            raise NotFoundError(f"no capture {capture_id!r}: GET /v1/review?status=labelled lists decided ones")
        return self._apply([self._plan(row, actor)], actor)[0]

    def undo_last(self, actor: Actor, count: int = 1) -> list[Undone]:
        """The ``count`` latest decisions made with this token's role, newest first."""
        rows = self.queue.store.last_decided(actor, count)
        if not rows:
            raise ConflictError("no review decision of this token to undo")
        return self._apply([self._plan(row, actor) for row in rows], actor)

    def _plan(self, row: CaptureRow, actor: Actor) -> _Plan:
        if row.status not in _DECIDED:
            raise ConflictError(f"capture {row.id} is {row.status}: only a label, skip or reject decision can be "
                                "undone")  # fmt: skip
        if actor == "samples" and row.reviewed_by != "samples":
            raise PermissionDeniedError(f"capture {row.id} was decided with the admin token (or before graft "
                                        "recorded who decided): only the admin token may undo it")  # fmt: skip
        if row.status != "labelled" or not row.sample_id or not row.created_sample:
            return _Plan(row, None)
        sample = self.corrections.samples.get(row.sample_id)
        others = [c for c in self.queue.store.labelled_as(row.sample_id) if c != row.id]
        if sample is None or others:
            return _Plan(row, None)
        self.corrections.may_change(sample, actor, "remove")
        return _Plan(row, sample)

    def _apply(self, plans: list[_Plan], actor: Actor) -> list[Undone]:
        audit_ids = []
        with self.db.tx():
            for plan in plans:
                if plan.remove is not None:  # its captures, this one included, go back to the queue
                    self.corrections.remove_rows(plan.remove, actor, via=f"review.undo of capture {plan.row.id}")
                else:
                    self.queue.store.reopen(plan.row.id)
                r, gone = plan.row, plan.remove is not None
                audit_ids.append(self.audit.record(actor, "review.undo", r.id, decision=r.status, label=r.label,
                                                   sample=r.sample_id, sample_removed=gone))  # fmt: skip
        removed = [p.remove.label for p in plans if p.remove is not None]
        if removed:
            self.corrections.after_removal(removed)
            self.corrections.sweep()
        out = []
        for plan, audit_id in zip(plans, audit_ids, strict=True):
            now = self.queue.store.get(plan.row.id)
            assert now is not None
            kept = plan.row.sample_id if plan.remove is None and plan.row.status == "labelled" else None
            out.append(Undone(now, plan.row.status, plan.row.label, plan.remove.id if plan.remove else None, kept,
                              audit_id))  # fmt: skip
        return out
