"""``/v1/models``, promotion and rollback (admin token)."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from admin.api.auth import require_admin
from admin.api.deps import ERRORS, service
from admin.api.schemas import DeploymentOut, ModelOut, ModelsOut
from admin.domain.service import AdminService, ModelView

# How many recent jobs are searched for a measurement of a version that has none of its own.
_JOBS_SEARCHED = 500

router = APIRouter(prefix="/v1", tags=["models"], responses=ERRORS, dependencies=[Depends(require_admin)])


def with_measured_holdout(svc: AdminService, view: ModelView) -> ModelView:
    """``view`` with a holdout score: its own, or else the newest one a job measured while it was the champion.

    A version trained by a job gets its holdout score from that job. The first version is imported, so nothing
    scores it until a job judges a candidate against it; that job measures the champion on the same fair holdout
    images (``champion_metrics``), and this is the value shown from then on (``measured_by_job`` says which job).
    """
    model = view.model
    if model.metrics.get("holdout") is not None:
        return view
    for job in svc.jobs.recent(_JOBS_SEARCHED):  # newest first
        if job.champion_version == model.version and job.champion_metrics:
            holdout = {**job.champion_metrics, "measured_by_job": job.id}
            measured = model.model_copy(update={"metrics": {**model.metrics, "holdout": holdout}})
            return dataclasses.replace(view, model=measured)
    return view


@router.get("/models", response_model=ModelsOut)
def list_models(request: Request) -> ModelsOut:
    svc = service(request)
    return ModelsOut(
        model_name=svc.model_name or "",
        default=svc.registry.default_version(),
        models=[ModelOut.of(with_measured_holdout(svc, v)) for v in svc.models()],
        history=[DeploymentOut.of(d) for d in svc.history()],
    )


@router.get("/models/{version}", response_model=ModelOut)
def get_model(request: Request, version: str) -> ModelOut:
    svc = service(request)
    return ModelOut.of(with_measured_holdout(svc, svc.model_view(version)))


@router.post("/models/{version}/promote", response_model=ModelOut)
def promote(
    request: Request, version: str, force: Annotated[bool, Query(description="promote a rejected one")] = False
) -> ModelOut:
    svc = service(request)
    svc.promote(version, force=force)
    return ModelOut.of(with_measured_holdout(svc, svc.model_view(version)))


@router.post("/rollback", response_model=ModelOut)
def rollback(request: Request) -> ModelOut:
    svc = service(request)
    model = svc.rollback()
    return ModelOut.of(with_measured_holdout(svc, svc.model_view(model.version)))
