"""``/v1/audit``: the audit trail (admin token): who changed the data, what, and when, newest first."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from admin.api.auth import require_admin
from admin.api.deps import ERRORS, service

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=ERRORS)


class AuditOut(BaseModel):
    id: int
    at: str
    actor: str = Field(description="the token's role: admin | samples | insecure")
    action: str = Field(description="sample.add | sample.relabel | sample.delete | sample.confirm | label.add | "
                        "label.remove | label.rename | label.merge | review.label | review.skip | review.reject | "
                        "review.undo | review.erase | erasure.lift")
    target: str = Field(description="a sample id, a label, or a capture id")
    detail: dict[str, Any] = Field(description="what it was and what it became")


class AuditPage(BaseModel):
    entries: list[AuditOut]
    next_before: int | None = Field(description="pass as ?before= for the next (older) page; null at the end")


@router.get("", response_model=AuditPage, dependencies=[Depends(require_admin)])
def audit(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1)] = None,
    action: Annotated[str | None, Query(max_length=64, description="an action, or a family: label.*")] = None,
    target: Annotated[str | None, Query(max_length=512)] = None,
) -> AuditPage:
    """Every recorded change, newest first."""
    rows = service(request).audit.entries(limit, before, action, target)
    entries = [AuditOut(**r.model_dump()) for r in rows]
    return AuditPage(entries=entries, next_before=entries[-1].id if len(entries) == limit else None)
