"""Erasures in force, and lifting one: a picture erased by mistake (``DELETE /v1/review/{id}``) may be uploaded and
captured again once an admin lifts its erasure. Lifting forgets the picture's fingerprint; what the erasure already
removed (capture images, stored samples) stays removed. Each lift is audited (who, when, and which erasure)."""

from __future__ import annotations

from dataclasses import dataclass

from admin.store.audit import AuditStore
from admin.store.erasures import ErasureStore
from admin.store.rows import Actor
from graft.core.capture import valid_id
from graft.core.errors import NotFoundError
from graft.core.util import utc_now


@dataclass(frozen=True)
class ErasureInfo:
    id: str  # the capture the erasure was asked on (the id an ErasedPictureError names)
    erased_at: str
    erased_by: str | None  # the token's role, from the audit trail (None: no entry, e.g. erased before the trail)
    audit_id: int | None  # the review.erase entry


@dataclass(frozen=True)
class Lifted:
    id: str
    erased_at: str
    lifted_at: str
    lifted_by: Actor
    audit_id: int


class Erasures:
    def __init__(self, store: ErasureStore, audit: AuditStore):
        self.store = store
        self.audit = audit

    def list(self, limit: int, offset: int = 0) -> tuple[list[ErasureInfo], int]:
        """A page of the erasures in force, newest first, and how many there are: ids, dates and who; never a hash
        or a byte of the picture."""
        out = []
        for row in self.store.list(limit, offset):
            entries = self.audit.entries(1, None, "review.erase", row.id)
            first = entries[0] if entries else None
            out.append(ErasureInfo(row.id, row.erased_at, first.actor if first else None, first.id if first else None))
        return out, self.store.count()

    def lift(self, erasure_id: str, actor: Actor) -> Lifted:
        """Lift the erasure: later uploads and captures of the picture are accepted again. The erasure's row and its
        audit entry go in one transaction."""
        how = "GET /v1/erasures lists the erasures in force"
        if not valid_id(erasure_id):
            raise NotFoundError(f"no erasure {erasure_id!r}: {how}")
        with self.store.db.tx():
            row = self.store.lift(erasure_id)
            if row is None:
                raise NotFoundError(f"no erasure {erasure_id!r} (never erased, or lifted already): {how}")
            at = utc_now()
            audit_id = self.audit.record(actor, "erasure.lift", row.id, erased_at=row.erased_at)
        return Lifted(row.id, row.erased_at, at, actor, audit_id)
