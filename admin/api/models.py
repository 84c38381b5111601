"""``/v1/models``, promotion and rollback (admin token)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from admin.api.auth import require_admin
from admin.api.deps import ERRORS, service
from admin.api.schemas import DeploymentOut, ModelOut, ModelsOut
from admin.domain.service import AdminService, ModelView

# How many recent jobs are searched for a measurement of a version that has none of its own.
_JOBS_SEARCHED = 500

router = APIRouter(prefix="/v1", tags=["models"], responses=ERRORS, dependencies=[Depends(require_admin)])


def champion_measurements(svc: AdminService) -> dict[str, dict[str, Any]]:
    """``{version: score}``: the newest holdout score a job measured for each version it judged a candidate
    against (``champion_metrics``), with ``measured_by_job`` naming that job."""
    found: dict[str, dict[str, Any]] = {}
    for job in svc.jobs.recent(_JOBS_SEARCHED):  # newest first: the first one seen is the newest
        if job.champion_version and job.champion_metrics and job.champion_version not in found:
            found[job.champion_version] = {**job.champion_metrics, "measured_by_job": job.id}
    return found


def with_measured_holdout(
    svc: AdminService, view: ModelView, measured: dict[str, dict[str, Any]] | None = None
) -> ModelView:
    """``view`` with a holdout score: its own, or else the newest one a job measured while it was the champion.

    A version trained by a job gets its holdout score from that job. The first version is imported, so nothing
    scores it until a job judges a candidate against it; that job measures the champion on the same fair holdout
    images, and this is the value shown from then on. ``measured``: :func:`champion_measurements`, when the
    caller shows several versions (one query instead of one per version).
    """
    model = view.model
    if model.metrics.get("holdout") is not None:
        return view
    holdout = (measured if measured is not None else champion_measurements(svc)).get(model.version)
    if holdout is None:
        return view
    return dataclasses.replace(view, model=model.model_copy(update={"metrics": {**model.metrics, "holdout": holdout}}))


@router.get("/models", response_model=ModelsOut)
def list_models(request: Request) -> ModelsOut:
    svc = service(request)
    views = svc.models()
    measured = champion_measurements(svc) if any(v.model.metrics.get("holdout") is None for v in views) else {}
    return ModelsOut(
        model_name=svc.model_name or "",
        default=svc.registry.default_version(),
        models=[ModelOut.of(with_measured_holdout(svc, v, measured)) for v in views],
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
