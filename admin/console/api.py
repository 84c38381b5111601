"""JSON for the console's scripts: live job progress and the review page's queue, decisions and undo.

Same session cookie as the pages; a decision or an undo also needs the ``X-CSRF-Token`` header."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from admin.api.deps import service
from admin.console import views
from admin.console.actions import CSRF_HEADER, check_csrf
from admin.console.render import require_admin_page, session_of
from admin.domain.undo import Undone
from admin.store.rows import CaptureStatus
from graft.core.errors import ConflictError, UserInputError

router = APIRouter(prefix="/console/api", include_in_schema=False)


class ReviewDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str | None = Field(default=None, max_length=512)
    skip: bool = False
    reject: bool = False
    new_label: bool = False


def _review_stats(request: Request) -> dict[str, Any]:
    name = service(request).model_name
    if name is None:
        raise ConflictError("no model in service yet")
    st = service(request).feedback.review.stats(name)
    return {"captured": st.captured, "queued": st.by_status.get("queued", 0),
            "labelled": st.by_status.get("labelled", 0), "skipped": st.by_status.get("skipped", 0),
            "rejected": st.by_status.get("rejected", 0)}  # fmt: skip


@router.get("/jobs/{job_id}")
def job(request: Request, job_id: str) -> dict[str, Any]:
    require_admin_page(request)
    svc = service(request)
    j = svc.jobs.get(job_id)
    return {**views.job_view(j, svc.registry.default_version()), "log": views.log_tail(j, 30)}


@router.get("/review")
async def review(
    request: Request,
    strategy: Literal["margin", "entropy", "random"] = "margin",
    limit: int = Query(24, ge=1, le=100),
) -> dict[str, Any]:
    session_of(request)
    svc = service(request)
    name = svc.model_name
    if name is None:
        raise ConflictError("no model in service yet: nothing is captured before one serves")
    rows = await run_in_threadpool(svc.feedback.review.items, name, strategy, limit)
    return {"items": [views.review_item(r) for r in rows], "stats": await run_in_threadpool(_review_stats, request)}


@router.post("/review/undo")
async def undo_last(request: Request) -> dict[str, Any]:
    """The latest decision of this session's token (after a reload the page no longer knows its own). Declared
    before ``/review/{capture_id}``, which would take "undo" for an id."""
    session = session_of(request)
    check_csrf(session, request.headers.get(CSRF_HEADER))
    done = await run_in_threadpool(service(request).undo.undo_last, session.role, 1)
    return await _undone(request, done)


@router.post("/review/{capture_id}")
async def decide(request: Request, capture_id: str, body: ReviewDecision) -> dict[str, Any]:
    session = session_of(request)
    check_csrf(session, request.headers.get(CSRF_HEADER))
    if sum((body.label is not None, body.skip, body.reject)) != 1:
        raise UserInputError('send exactly one of {"label": NAME}, {"skip": true} or {"reject": true}')
    queue, name = service(request).feedback.review, service(request).model_name
    out: dict[str, Any] = {"id": capture_id}
    if body.label is not None:
        label = body.label
        stored = await run_in_threadpool(lambda: queue.label(capture_id, label, session.role, name,
                                                             new_label=body.new_label))  # fmt: skip
        out.update(status="labelled", label=stored.label, sample=stored.id, split=stored.split)
    else:
        status: CaptureStatus = "skipped" if body.skip else "rejected"
        row = await run_in_threadpool(queue.decide, capture_id, status, name, session.role)
        out.update(status=row.status)
    out["stats"] = await run_in_threadpool(_review_stats, request)
    return out


@router.post("/review/{capture_id}/undo")
async def undo(request: Request, capture_id: str) -> dict[str, Any]:
    session = session_of(request)
    check_csrf(session, request.headers.get(CSRF_HEADER))
    done = await run_in_threadpool(service(request).undo.undo, capture_id, session.role)
    return await _undone(request, [done])


async def _undone(request: Request, done: list[Undone]) -> dict[str, Any]:
    items = [{**views.review_item(u.capture), "undone": u.decision, "label": u.label,
              "sample_removed": u.sample_removed} for u in done]  # fmt: skip
    return {"items": items, "stats": await run_in_threadpool(_review_stats, request)}
