"""``/v1/labels``: the label set the admin owns (listing: admin or samples token; changes: admin token).

Listed in key order: the order labels joined the set, which the review page's keys 1-9 follow, so a new
label never moves another one's key. Rename and merge correct a label everywhere (samples and review
decisions), recorded in the audit trail."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from admin.api.auth import Role, require_admin, require_sampler
from admin.api.deps import ERRORS, service
from admin.domain.corrections import LabelChange, sees_splits

router = APIRouter(prefix="/v1/labels", tags=["labels"], responses=ERRORS)


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=512, description="the class name to approve")
    new_label: bool = Field(default=False, description="confirm a name close to an existing label (the typo guard)")


class RenameIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: str = Field(max_length=512, description="the new name")
    new_label: bool = Field(default=False, description="confirm a name close to another existing label")


class MergeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    into: str = Field(max_length=512, description="the existing label that takes this one's samples")


class LabelOut(BaseModel):
    name: str
    source: str = Field(description="model: a model in service knows it; admin: an admin approved it")
    samples: int = Field(description="stored samples under this label")
    train: int | None = Field(description="training samples (null for the samples token: the split is the admin's)")
    holdout: int | None = Field(description="holdout samples (null for the samples token)")
    in_service: bool = Field(description="the model in service predicts it")
    key: int | None = Field(description="its key on the review page (1-9), in the order labels joined the set")


class LabelsOut(BaseModel):
    labels: list[LabelOut]


class LabelChangeOut(BaseModel):
    label: LabelOut
    previous: str = Field(description="the name it had (rename), or the label merged away (merge)")
    samples: int = Field(description="samples whose label changed")
    audit_id: int


def labels_out(request: Request, role: Role = "admin") -> LabelsOut:
    """The label set; the counts per split only for the admin (the samples token must not learn the holdout)."""
    svc = service(request)
    splits = sees_splits(role)
    counts = svc.samples.counts()
    served = set(svc.served_labels())
    out = []
    for i, label in enumerate(svc.labels.all(), start=1):
        c = counts.get(label.name, {})
        train, holdout = (c.get("train", 0), c.get("holdout", 0)) if splits else (None, None)
        out.append(LabelOut(name=label.name, source=label.source, samples=sum(c.values()), train=train,
                            holdout=holdout, in_service=label.name in served, key=i if i <= 9 else None))  # fmt: skip
    return LabelsOut(labels=out)


def _change(request: Request, change: LabelChange) -> LabelChangeOut:
    (label,) = [x for x in labels_out(request).labels if x.name == change.label.name]
    return LabelChangeOut(label=label, previous=change.previous, samples=change.samples, audit_id=change.audit_id)


@router.get("", response_model=LabelsOut)
def list_labels(request: Request, role: Annotated[Role, Depends(require_sampler)]) -> LabelsOut:
    """Every label samples may be posted under (the samples token may use only these), in key order."""
    return labels_out(request, role)


@router.post("", status_code=201, response_model=LabelsOut)
def approve_label(request: Request, body: LabelIn, role: Annotated[Role, Depends(require_admin)]) -> LabelsOut:
    """Approve a new label: the samples token may use it from now on (its spelling is normalised first; one
    close to an existing label needs new_label=true)."""
    service(request).labels.approve(body.name, actor=role, new_label=body.new_label)
    return labels_out(request)


@router.delete("/{name}", response_model=LabelsOut)
def remove_label(request: Request, name: str, role: Annotated[Role, Depends(require_admin)]) -> LabelsOut:
    """Withdraw an approval (409 for a label of the model in service, or one with samples: merge it instead)."""
    svc = service(request)
    svc.labels.remove(name, svc.served_labels(), actor=role)
    return labels_out(request)


@router.post("/{name}/rename", response_model=LabelChangeOut)
async def rename_label(request: Request, name: str, body: RenameIn,
                       role: Annotated[Role, Depends(require_admin)]) -> LabelChangeOut:  # fmt: skip
    """Rename a label and every sample under it (keeps its key); 409 when the new name exists (merge instead)
    or for a label of the model in service."""
    change = await run_in_threadpool(service(request).corrections.rename_label, name, body.to, role, body.new_label)
    return _change(request, change)


@router.post("/{name}/merge", response_model=LabelChangeOut)
async def merge_label(request: Request, name: str, body: MergeIn,
                      role: Annotated[Role, Depends(require_admin)]) -> LabelChangeOut:  # fmt: skip
    """Move every sample of this label under an existing one, and drop this label from the set."""
    change = await run_in_threadpool(service(request).corrections.merge_label, name, body.into, role)
    return _change(request, change)
