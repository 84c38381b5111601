"""``/v1/models``, promotion and rollback (admin token)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from admin.api.auth import require_admin
from admin.api.deps import ERRORS, service
from admin.api.schemas import DeploymentOut, ModelOut, ModelsOut

router = APIRouter(prefix="/v1", tags=["models"], responses=ERRORS, dependencies=[Depends(require_admin)])


@router.get("/models", response_model=ModelsOut)
def list_models(request: Request) -> ModelsOut:
    svc = service(request)
    return ModelsOut(
        model_name=svc.model_name or "",
        default=svc.registry.default_version(),
        models=[ModelOut.of(v) for v in svc.models()],
        history=[DeploymentOut.of(d) for d in svc.history()],
    )


@router.get("/models/{version}", response_model=ModelOut)
def get_model(request: Request, version: str) -> ModelOut:
    return ModelOut.of(service(request).model_view(version))


@router.post("/models/{version}/promote", response_model=ModelOut)
def promote(
    request: Request, version: str, force: Annotated[bool, Query(description="promote a rejected one")] = False
) -> ModelOut:
    svc = service(request)
    svc.promote(version, force=force)
    return ModelOut.of(svc.model_view(version))


@router.post("/rollback", response_model=ModelOut)
def rollback(request: Request) -> ModelOut:
    svc = service(request)
    model = svc.rollback()
    return ModelOut.of(svc.model_view(model.version))
