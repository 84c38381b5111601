"""``/v1/labels``: the label set the admin owns (listing: admin or samples token; changes: admin token)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from admin.api.auth import require_admin, require_sampler
from admin.api.deps import ERRORS, service

router = APIRouter(prefix="/v1/labels", tags=["labels"], responses=ERRORS)


class LabelIn(BaseModel):
    name: str = Field(max_length=512, description="the class name to approve")


class LabelOut(BaseModel):
    name: str
    source: str = Field(description="model: a model in service knows it; admin: an admin approved it")
    samples: int = Field(description="stored samples under this label")
    in_service: bool = Field(description="the model in service predicts it")


class LabelsOut(BaseModel):
    labels: list[LabelOut]


def _out(request: Request) -> LabelsOut:
    svc = service(request)
    counts = svc.samples.counts()
    champion = svc.registry.champion()
    served = set(champion.labels) if champion else set()
    return LabelsOut(labels=[
        LabelOut(name=label.name, source=label.source, samples=sum(counts.get(label.name, {}).values()),
                 in_service=label.name in served)
        for label in svc.labels.all()
    ])  # fmt: skip


@router.get("", response_model=LabelsOut, dependencies=[Depends(require_sampler)])
def list_labels(request: Request) -> LabelsOut:
    """Every label samples may be posted under; the samples token may use only these."""
    return _out(request)


@router.post("", status_code=201, response_model=LabelsOut, dependencies=[Depends(require_admin)])
def approve_label(request: Request, body: LabelIn) -> LabelsOut:
    """Approve a new label: the samples token may use it from now on (its spelling is normalised first)."""
    service(request).labels.approve(body.name)
    return _out(request)


@router.delete("/{name}", response_model=LabelsOut, dependencies=[Depends(require_admin)])
def remove_label(request: Request, name: str) -> LabelsOut:
    """Withdraw an approval (409 for a label of the model in service, or one with samples)."""
    svc = service(request)
    champion = svc.registry.champion()
    svc.labels.remove(name, champion.labels if champion else [])
    return _out(request)
