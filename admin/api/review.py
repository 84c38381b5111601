"""``/v1/review``: captured traffic to label, and decisions to undo (admin or samples token; the samples token
undoes its own decisions only; deleting a capture needs the admin token)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from admin.api.auth import Role, require_admin, require_sampler
from admin.api.deps import ERRORS, service
from admin.api.schemas import SampleOut
from admin.domain.undo import Undone
from admin.store.rows import CaptureRow
from graft.core.errors import ConflictError

router = APIRouter(prefix="/v1/review", tags=["review"], responses=ERRORS)


class Score(BaseModel):
    label: str
    score: float


class ReviewItem(BaseModel):
    id: str
    predicted: str = Field(description="the label the model answered")
    scores: list[Score] = Field(description="top-k answer, most probable first")
    margin: float = Field(description="top-1 minus top-2 probability: small means unsure")
    entropy: float = Field(description="of the whole distribution, in nats: large means unsure")
    model_version: str
    captured_at: str
    status: str
    seen: int = Field(description="times this picture (or a near-duplicate) was captured")
    label: str | None = None
    sample_id: str | None = None
    image_url: str

    @classmethod
    def of(cls, row: CaptureRow) -> ReviewItem:
        at = dt.datetime.fromtimestamp(row.captured_at, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return cls(
            id=row.id, predicted=row.predicted, margin=row.margin, entropy=row.entropy,
            scores=[Score(label=lab, score=s) for lab, s in zip(row.labels, row.scores, strict=True)],
            model_version=row.model_version, captured_at=at, status=row.status, seen=row.seen, label=row.label,
            sample_id=row.sample_id, image_url=f"/v1/review/{row.id}/image",
        )  # fmt: skip


class ReviewPage(BaseModel):
    model_name: str
    strategy: str
    items: list[ReviewItem]
    next: str | None = Field(default=None, description="pass as `after` for the next page; null: no more "
                             "(always null for strategy=random)")  # fmt: skip


class Decision(BaseModel):
    """Exactly one of: a label (the capture becomes a sample), skip (hide it), reject (none of the classes)."""

    model_config = ConfigDict(extra="forbid")
    label: str | None = Field(default=None, max_length=512)
    skip: bool = False
    reject: bool = False
    new_label: bool = Field(default=False, description="confirm a new label close to a known one (admin)")

    @model_validator(mode="after")
    def _one(self) -> Decision:
        if sum((self.label is not None, self.skip, self.reject)) != 1:
            raise ValueError('send exactly one of {"label": NAME}, {"skip": true} or {"reject": true}')
        return self


class DecisionOut(BaseModel):
    item: ReviewItem
    sample: SampleOut | None = None


class UndoIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int = Field(default=1, ge=1, le=100, description="how many of this token's latest decisions")


class UndoneOut(BaseModel):
    item: ReviewItem = Field(description="the capture, back in the queue")
    decision: str = Field(description="what was undone: labelled | skipped | rejected")
    label: str | None
    sample_removed: str | None = Field(description="the sample the label decision had created, now deleted")
    sample_kept: str | None = Field(description="a sample kept: stored before the decision, or used by another")
    audit_id: int


class UndoOut(BaseModel):
    undone: list[UndoneOut]


class ReviewStatsOut(BaseModel):
    model_name: str
    captured: int
    queued: int
    labelled: int
    skipped: int
    rejected: int
    duplicates: int
    by_status: dict[str, int]
    by_predicted: dict[str, dict[str, int]]


def _model_name(request: Request) -> str:
    name = service(request).model_name
    if name is None:
        raise ConflictError("no model in service yet: nothing is captured before one serves")
    return name


_AFTER = (
    "the previous page's `next`: continue after it (a seek at any depth; captures arriving meanwhile do not shift it)"
)


@router.get("", response_model=ReviewPage, dependencies=[Depends(require_sampler)])
def review_queue(
    request: Request,
    strategy: Literal["margin", "entropy", "random"] = "margin",
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
    status: Literal["queued", "skipped", "rejected", "labelled"] = "queued",
    after: Annotated[str | None, Query(max_length=200, description=_AFTER)] = None,
) -> ReviewPage:
    """Captured inputs nobody labelled yet, the most uncertain first (near-duplicates collapsed)."""
    name = _model_name(request)
    rows, more = service(request).feedback.review.page(name, strategy, limit, status, offset, after)
    return ReviewPage(model_name=name, strategy=strategy, items=[ReviewItem.of(r) for r in rows], next=more)


@router.get("/stats", response_model=ReviewStatsOut, dependencies=[Depends(require_sampler)])
def review_stats(request: Request) -> ReviewStatsOut:
    name = _model_name(request)
    st = service(request).feedback.review.stats(name)
    by = st.by_status
    return ReviewStatsOut(
        model_name=name, captured=st.captured, queued=by.get("queued", 0), labelled=by.get("labelled", 0),
        skipped=by.get("skipped", 0), rejected=by.get("rejected", 0), duplicates=by.get("duplicate", 0),
        by_status=by, by_predicted=st.by_predicted,
    )  # fmt: skip


@router.get("/{capture_id}", response_model=ReviewItem, dependencies=[Depends(require_sampler)])
def review_item(request: Request, capture_id: str) -> ReviewItem:
    return ReviewItem.of(service(request).feedback.review.get(capture_id, service(request).model_name))


@router.get("/{capture_id}/image", dependencies=[Depends(require_sampler)], response_class=Response)
def review_image(request: Request, capture_id: str) -> Response:
    """The captured image as the client sent it."""
    capture, _row = service(request).feedback.review.image(capture_id, service(request).model_name)
    # nosniff: the bytes came from a client; a browser must not guess another type from them.
    return Response(capture.image, media_type=capture.record.media_type, headers={"X-Content-Type-Options": "nosniff",
                                                               "Cache-Control": "private, max-age=3600"})  # fmt: skip


@router.post("/{capture_id}/label", response_model=DecisionOut)
async def decide(
    request: Request, capture_id: str, body: Decision, role: Annotated[Role, Depends(require_sampler)]
) -> DecisionOut:
    """Label it (same rules as an upload: a samples token may use known labels only), skip or reject it."""
    queue, name = service(request).feedback.review, service(request).model_name
    if body.label is not None:
        stored = await run_in_threadpool(lambda: queue.label(capture_id, str(body.label), role, name,
                                                             new_label=body.new_label))  # fmt: skip
        row = await run_in_threadpool(queue.get, capture_id)
        return DecisionOut(item=ReviewItem.of(row), sample=SampleOut.of(stored))
    row = await run_in_threadpool(queue.decide, capture_id, "skipped" if body.skip else "rejected", name, role)
    return DecisionOut(item=ReviewItem.of(row))


def undo_out(done: list[Undone]) -> UndoOut:
    return UndoOut(undone=[
        UndoneOut(item=ReviewItem.of(u.capture), decision=u.decision, label=u.label, sample_removed=u.sample_removed,
                  sample_kept=u.sample_kept, audit_id=u.audit_id)
        for u in done
    ])  # fmt: skip


@router.post("/undo", response_model=UndoOut)
async def undo_last(request: Request, role: Annotated[Role, Depends(require_sampler)],
                    body: UndoIn | None = None) -> UndoOut:  # fmt: skip
    """Undo this token's latest decisions (all of them or none): each capture goes back to the queue, and a
    sample a label decision created is removed unless something else uses it."""
    count = body.count if body is not None else 1
    return undo_out(await run_in_threadpool(service(request).undo.undo_last, role, count))


@router.post("/{capture_id}/undo", response_model=UndoOut)
async def undo(request: Request, capture_id: str, role: Annotated[Role, Depends(require_sampler)]) -> UndoOut:
    """Undo the decision on this capture (label, skip or reject)."""
    return undo_out([await run_in_threadpool(service(request).undo.undo, capture_id, role)])


class ErasedSample(BaseModel):
    id: str
    label: str
    split: str


class ErasedOut(BaseModel):
    captures: list[str] = Field(description="captures whose image was erased (their rows stay, marked deleted)")
    samples: list[ErasedSample] = Field(description="stored samples of the same picture, deleted")
    sample_files: str | None = Field(description="'deleted', or why the samples' files are kept for now")
    audit_id: int | None


@router.delete("/{capture_id}", response_model=ErasedOut)
def delete_capture(request: Request, capture_id: str, role: Annotated[Role, Depends(require_admin)]) -> ErasedOut:
    """Erase the captured picture everywhere: this capture's image, every other copy of it (exact and near
    duplicates), every later capture of it (rows stay, marked deleted, for the counts; replay never sends them),
    and every stored sample of it. Says what was removed."""
    done = service(request).feedback.review.delete(capture_id, role)
    samples = [ErasedSample(id=s.id, label=s.label, split=s.split) for s in done.samples]
    return ErasedOut(captures=done.captures, samples=samples, sample_files=done.sample_files, audit_id=done.audit_id)
