"""``/v1/retrain`` and ``/v1/jobs``: start, follow and cancel retraining jobs (admin token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Request, Response

from admin.api.auth import require_admin
from admin.api.deps import ERRORS, service
from admin.api.schemas import JobAccepted, JobList, JobOut
from admin.domain.recipe import RetrainRequest
from graft.core.errors import UserInputError


class NotJsonError(UserInputError):
    """A retrain body that is not JSON (curl -d sends a form unless told otherwise)."""

    status_code = 415


def require_json(request: Request) -> None:
    """Runs before the body is validated: a form-encoded body would otherwise get a 422 about a missing object."""
    has_body = request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if has_body and kind and kind != "application/json" and not kind.endswith("+json"):
        raise NotJsonError(
            f"the retrain settings must be JSON, sent with 'Content-Type: application/json', not {kind!r} "
            """(curl --json '{"epochs": 5}', or -H 'Content-Type: application/json'); no body at all retrains """
            "with the recipe of the model in service"
        )

router = APIRouter(prefix="/v1", tags=["jobs"], responses=ERRORS, dependencies=[Depends(require_admin)])


@router.post("/retrain", status_code=202, response_model=JobAccepted, dependencies=[Depends(require_json)])
def retrain(request: Request, response: Response, body: Annotated[RetrainRequest | None, Body()] = None) -> JobAccepted:
    """Start a retraining job; every setting left out comes from the champion's recipe and the service's defaults."""
    job = service(request).jobs.start(body or RetrainRequest())
    href = f"/v1/jobs/{job.id}"
    response.headers["Location"] = href
    return JobAccepted(job_id=job.id, status=job.status, candidate_version=job.candidate_version, href=href)


@router.get("/jobs", response_model=JobList)
def list_jobs(request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> JobList:
    return JobList(jobs=[JobOut.of(j) for j in service(request).jobs.recent(limit)])


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(request: Request, job_id: str) -> JobOut:
    return JobOut.of(service(request).jobs.get(job_id))


@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobOut)
def cancel_job(request: Request, job_id: str) -> JobOut:
    return JobOut.of(service(request).jobs.cancel(job_id))
