"""``/v1/samples``: labelled images in (admin or samples token), statistics and metadata out (admin), and
corrections: relabel (``PATCH``) and delete (``DELETE``), the samples token on its own training samples only;
confirm a label (``POST .../confirm``), the admin only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from admin.api.auth import Role, require_admin, require_sampler
from admin.api.deps import ERRORS, service
from admin.api.schemas import BatchOut, SampleMetaOut, SampleOut, StatsOut
from admin.api.uploads import read_form_fields
from admin.store.rows import StoredSample
from graft.core.errors import GraftError, InvalidSampleError, NotFoundError

_MULTIPART_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "label"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "the image (JPEG, PNG, ...)"},
                        "label": {"type": "string", "description": "class name"},
                        "new_label": {"type": "boolean", "description": "confirm a new label close to a known one"},
                    },
                }
            }
        },
    }
}
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")

router = APIRouter(prefix="/v1/samples", tags=["samples"], responses=ERRORS)


def form_flag(value: str | None, name: str) -> bool:
    """A boolean form field: true/1/yes/on or false/0/no/off (absent: false)."""
    text = (value or "").strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise InvalidSampleError(f"form field {name!r} must be true or false, not {value!r}")


async def _receive(request: Request, batch: bool, role: Role) -> list[StoredSample]:
    svc = service(request)
    st = svc.settings
    try:
        files = st.max_batch_files if batch else 1
        uploads, labels, fields = await read_form_fields(request, st.max_upload_bytes, files, ("new_label",))
        if not labels:
            raise InvalidSampleError("missing label: send the class name in the 'label' form field")
        new_label = form_flag(fields.get("new_label"), "new_label")
    except GraftError as e:
        svc.metrics.samples_rejected.labels(reason=type(e).__name__).inc()
        raise
    return await run_in_threadpool(svc.add_samples, uploads, labels, role, new_label=new_label)


@router.post(
    "", status_code=201, response_model=SampleOut, openapi_extra=_MULTIPART_DOC,
    summary="Store one labelled image (admin or samples token; the samples token may use known labels only)",
)  # fmt: skip
async def post_sample(request: Request, role: Annotated[Role, Depends(require_sampler)]) -> SampleOut:
    # 201 for a duplicate too, as the API promises; ``duplicate`` says nothing new was stored.
    return SampleOut.of((await _receive(request, False, role))[0])


@router.post(
    "/batch", status_code=201, response_model=BatchOut, openapi_extra=_MULTIPART_DOC,
    summary="Store many images: repeated 'file' parts, one 'label' or one per file; all of them or none",
)  # fmt: skip
async def post_samples_batch(request: Request, role: Annotated[Role, Depends(require_sampler)]) -> BatchOut:
    stored = await _receive(request, True, role)
    dups = sum(s.duplicate for s in stored)
    return BatchOut(items=[SampleOut.of(s) for s in stored], created=len(stored) - dups, duplicates=dups)


class SampleList(BaseModel):
    samples: list[SampleMetaOut]
    offset: int
    limit: int


@router.get("", response_model=SampleList)
def list_samples(
    request: Request,
    role: Annotated[Role, Depends(require_sampler)],
    label: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> SampleList:
    """Stored samples, newest first (the samples token sees the ones it uploaded)."""
    svc = service(request)
    name = svc.labels.get(label).name if label is not None else None
    rows = svc.samples.browse(name, "samples" if role == "samples" else None, limit, offset)
    return SampleList(samples=[SampleMetaOut.of(s) for s in rows], offset=offset, limit=limit)


@router.get("/stats", response_model=StatsOut, dependencies=[Depends(require_admin)])
def sample_stats(request: Request) -> StatsOut:
    return StatsOut.of(service(request).stats())


@router.get("/{sample_id}", response_model=SampleMetaOut, dependencies=[Depends(require_admin)])
def get_sample(request: Request, sample_id: str) -> Any:
    """One stored sample's metadata (the id is the sha256 of its bytes)."""
    sample = service(request).samples.get(sample_id)
    if sample is None:
        raise NotFoundError(f"no sample {sample_id!r}")
    return SampleMetaOut.of(sample)


class Relabel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(max_length=512, description="the right label")
    new_label: bool = Field(default=False, description="confirm a new label close to a known one (admin)")


class Relabelled(BaseModel):
    sample: SampleMetaOut
    previous_label: str
    changed: bool
    audit_id: int | None = Field(description="its entry in GET /v1/audit (null when nothing changed)")


class Deleted(BaseModel):
    deleted: SampleMetaOut
    requeued: list[str] = Field(description="captures labelled as this sample, back in the review queue")
    file: str = Field(description='"deleted", or kept until the running job that may read it ends')
    audit_id: int


@router.patch("/{sample_id}", response_model=Relabelled)
async def relabel_sample(
    request: Request, sample_id: str, body: Relabel, role: Annotated[Role, Depends(require_sampler)]
) -> Relabelled:
    """Relabel a sample: its split stays (a holdout sample stays holdout). The samples token may relabel the
    training samples it uploaded, to known labels."""
    done = await run_in_threadpool(service(request).corrections.relabel_sample, sample_id, body.label, role,
                                   body.new_label)  # fmt: skip
    return Relabelled(sample=SampleMetaOut.of(done.sample), previous_label=done.previous,
                      changed=done.audit_id is not None, audit_id=done.audit_id)  # fmt: skip


@router.delete("/{sample_id}", response_model=Deleted)
async def delete_sample(request: Request, sample_id: str, role: Annotated[Role, Depends(require_sampler)]) -> Deleted:
    """Delete a sample. A running job keeps the file until it ends; the next snapshot leaves the sample out. The
    samples token may delete the training samples it uploaded."""
    done = await run_in_threadpool(service(request).corrections.delete_sample, sample_id, role)
    return Deleted(deleted=SampleMetaOut.of(done.sample), requeued=done.requeued, file=done.file,
                   audit_id=done.audit_id)  # fmt: skip


class Confirm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(max_length=512, description="the label you looked at and found right (it must be the "
                                                   "sample's label now: 409 otherwise)")  # fmt: skip


class ConfirmedOut(BaseModel):
    sample: SampleMetaOut
    audit_id: int = Field(description="its entry in GET /v1/audit (action sample.confirm)")


@router.post("/{sample_id}/confirm", response_model=ConfirmedOut)
async def confirm_sample(request: Request, sample_id: str, body: Confirm,
                         role: Annotated[Role, Depends(require_admin)]) -> ConfirmedOut:  # fmt: skip
    """Say that a sample's label is right (admin): the data check neither lists it nor counts it against its label
    any more, so it no longer holds a candidate. Relabel or delete a wrong one instead."""
    done = await run_in_threadpool(service(request).corrections.confirm_sample, sample_id, body.label, role)
    return ConfirmedOut(sample=SampleMetaOut.of(done.sample), audit_id=done.audit_id)

