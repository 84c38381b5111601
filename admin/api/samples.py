"""``/v1/samples``: labelled images in (admin or samples token), statistics and metadata out (admin)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from admin.api.auth import Role, require_admin, require_sampler
from admin.api.deps import ERRORS, service
from admin.api.schemas import BatchOut, SampleMetaOut, SampleOut, StatsOut
from admin.api.uploads import read_form
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
                    },
                }
            }
        },
    }
}

router = APIRouter(prefix="/v1/samples", tags=["samples"], responses=ERRORS)


async def _receive(request: Request, batch: bool, role: Role) -> list[StoredSample]:
    svc = service(request)
    st = svc.settings
    try:
        if batch:
            uploads, labels = await read_form(request, st.max_upload_bytes, st.max_batch_files)
        else:
            uploads, labels = await read_form(request, st.max_upload_bytes, 1)
        if not labels:
            raise InvalidSampleError("missing label: send the class name in the 'label' form field")
    except GraftError as e:
        svc.metrics.samples_rejected.labels(reason=type(e).__name__).inc()
        raise
    return await run_in_threadpool(svc.add_samples, uploads, labels, role in ("admin", "insecure"))


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
