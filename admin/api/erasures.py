"""``/v1/erasures``: the pictures erased through ``DELETE /v1/review/{id}`` (admin token only), and lifting an erasure
made by mistake, so that the picture may be uploaded and captured again."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from admin.api.auth import Role, require_admin
from admin.api.deps import ERRORS, service

router = APIRouter(prefix="/v1/erasures", tags=["erasures"], responses=ERRORS)


class ErasureOut(BaseModel):
    id: str = Field(description="the capture the erasure was asked on; an ErasedPictureError names it")
    erased_at: str
    erased_by: str | None = Field(description="the token's role, from the audit trail")
    audit_id: int | None = Field(description="the review.erase entry in GET /v1/audit")


class ErasuresPage(BaseModel):
    erasures: list[ErasureOut] = Field(description="newest first; ids and dates only, nothing of the picture")
    total: int


class LiftedOut(BaseModel):
    id: str
    erased_at: str
    lifted_at: str
    lifted_by: str
    audit_id: int = Field(description="the erasure.lift entry in GET /v1/audit")


@router.get("", response_model=ErasuresPage, dependencies=[Depends(require_admin)])
def erasures(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> ErasuresPage:
    """The erasures in force, newest first."""
    rows, total = service(request).erasures.list(limit, offset)
    return ErasuresPage(erasures=[ErasureOut(id=r.id, erased_at=r.erased_at, erased_by=r.erased_by,
                                             audit_id=r.audit_id) for r in rows], total=total)  # fmt: skip


@router.delete("/{erasure_id}", response_model=LiftedOut)
async def lift(request: Request, erasure_id: str, role: Annotated[Role, Depends(require_admin)]) -> LiftedOut:
    """Lift an erasure: the picture may be uploaded and captured again. What it removed stays removed."""
    done = await run_in_threadpool(service(request).erasures.lift, erasure_id, role)
    return LiftedOut(id=done.id, erased_at=done.erased_at, lifted_at=done.lifted_at, lifted_by=done.lifted_by,
                     audit_id=done.audit_id)  # fmt: skip
