"""The ``/v1`` routes. Thin: parse, call the service, shape the answer; errors are raised, not built."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from admin.auth import require_admin, require_sampler
from admin.samples import StoredSample, inspect_image, validate_label
from admin.schemas import (
    BatchOut,
    ErrorOut,
    JobAccepted,
    JobList,
    JobOut,
    ModelOut,
    ModelsOut,
    RetrainIn,
    SampleOut,
    StatsOut,
)
from admin.service import AdminService
from admin.uploads import Upload, read_form
from graft.errors import GraftError, InvalidSampleError, NotFoundError

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 415, 422, 502)
}
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

router = APIRouter(prefix="/v1", responses=_ERRORS)


def _service(request: Request) -> AdminService:
    service: AdminService = request.app.state.service
    return service


def _store_all(service: AdminService, uploads: list[Upload], labels: list[str]) -> list[StoredSample]:
    """Validate every item first, store second: a bad item in a batch stores nothing."""
    if len(labels) not in (1, len(uploads)):
        raise InvalidSampleError(f"{len(uploads)} files but {len(labels)} labels: send one label, or one per file")
    checked = []
    for i, up in enumerate(uploads):
        try:
            label = validate_label(labels[0] if len(labels) == 1 else labels[i])
            checked.append((up.data, label, inspect_image(up.data, service.settings.max_image_pixels)))
        except GraftError as e:
            where = f"item {i} ({up.filename!r}): " if len(uploads) > 1 else ""
            raise type(e)(f"{where}{e}") from e
    stored = [service.store.add_validated(data, label, info) for data, label, info in checked]
    for s in stored:
        service.metrics.samples_received.labels(label=s.label, split=s.split, duplicate=str(s.duplicate).lower()).inc()
        if not s.duplicate:
            service.metrics.samples_stored.labels(label=s.label, split=s.split).inc()
    if any(not s.duplicate for s in stored):
        service.after_new_sample()
    return stored


async def _receive_samples(request: Request, batch: bool) -> list[StoredSample]:
    service = _service(request)
    st = service.settings
    try:
        if batch:
            uploads, labels = await read_form(request, st.max_upload_bytes, st.max_batch_files, st.max_batch_bytes)
        else:
            uploads, labels = await read_form(request, st.max_upload_bytes, 1)
        if not labels:
            raise InvalidSampleError("missing label: send the class name in the 'label' form field")
        return await run_in_threadpool(_store_all, service, uploads, labels)
    except GraftError as e:
        service.metrics.samples_rejected.labels(reason=type(e).__name__).inc()
        raise


def _sample_out(s: StoredSample) -> SampleOut:
    return SampleOut(id=s.id, label=s.label, split=s.split, duplicate=s.duplicate)  # type: ignore[arg-type]


@router.post(
    "/samples", status_code=201, response_model=SampleOut, dependencies=[Depends(require_sampler)],
    openapi_extra=_MULTIPART_DOC, summary="Store one labelled image (admin or samples token)",
)  # fmt: skip
async def post_sample(request: Request) -> SampleOut:
    # 201 for a duplicate too, as the API promises; ``duplicate`` says nothing new was stored.
    return _sample_out((await _receive_samples(request, batch=False))[0])


@router.post(
    "/samples/batch", status_code=201, response_model=BatchOut, dependencies=[Depends(require_sampler)],
    openapi_extra=_MULTIPART_DOC, summary="Store many images: repeated 'file' parts, one 'label' or one per file",
)  # fmt: skip
async def post_samples_batch(request: Request) -> BatchOut:
    stored = await _receive_samples(request, batch=True)
    items = [_sample_out(s) for s in stored]
    dups = sum(s.duplicate for s in stored)
    return BatchOut(items=items, created=len(items) - dups, duplicates=dups)


@router.get("/samples/stats", response_model=StatsOut, dependencies=[Depends(require_admin)])
def sample_stats(request: Request) -> dict[str, Any]:
    return _service(request).stats()


@router.get("/samples/{sample_id}", dependencies=[Depends(require_admin)])
def get_sample(request: Request, sample_id: str) -> dict[str, Any]:
    """One stored sample's metadata (the id is the sha256 of its bytes)."""
    sample = _service(request).store.get(sample_id)
    if sample is None:
        raise NotFoundError(f"no sample {sample_id!r}")
    return sample


@router.post("/retrain", status_code=202, response_model=JobAccepted, dependencies=[Depends(require_admin)])
def retrain(request: Request, response: Response, body: Annotated[RetrainIn | None, Body()] = None) -> JobAccepted:
    params = (body or RetrainIn()).model_dump(exclude_none=True)
    job = _service(request).jobs.start(params)
    href = f"/v1/jobs/{job['id']}"
    response.headers["Location"] = href
    return JobAccepted(job_id=job["id"], status=job["status"], candidate_version=job["candidate_version"], href=href)


@router.get("/jobs", response_model=JobList, dependencies=[Depends(require_admin)])
def list_jobs(request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
    return {"jobs": _service(request).jobs.recent(limit)}


@router.get("/jobs/{job_id}", response_model=JobOut, dependencies=[Depends(require_admin)])
def get_job(request: Request, job_id: str) -> dict[str, Any]:
    return _service(request).jobs.get(job_id)


@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobOut, dependencies=[Depends(require_admin)])
def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
    return _service(request).jobs.cancel(job_id)


@router.get("/models", response_model=ModelsOut, dependencies=[Depends(require_admin)])
def list_models(request: Request) -> dict[str, Any]:
    return _service(request).models_view()


@router.get("/models/{version}", response_model=ModelOut, dependencies=[Depends(require_admin)])
def get_model(request: Request, version: str) -> dict[str, Any]:
    service = _service(request)
    model = service.registry.get(version)
    model["default"] = service.registry.default_version() == version
    return model


@router.post("/models/{version}/promote", response_model=ModelOut, dependencies=[Depends(require_admin)])
def promote(
    request: Request, version: str, force: Annotated[bool, Query(description="promote a rejected one")] = False
) -> Any:
    model = _service(request).promote(version, force=force)
    model["default"] = True
    return model


@router.post("/rollback", response_model=ModelOut, dependencies=[Depends(require_admin)])
def rollback(request: Request) -> Any:
    model = _service(request).rollback()
    model["default"] = True
    return model
