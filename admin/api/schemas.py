"""Response bodies of the admin API (they are also its OpenAPI documentation), built from the typed rows.

The request body of ``POST /v1/retrain`` is :class:`admin.domain.recipe.RetrainRequest`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from admin.domain.service import ModelView, SampleStats
from admin.store.rows import Deployment, Job, SampleMeta, StoredSample


class ErrorBody(BaseModel):
    type: str = Field(description="error class, e.g. NotFoundError")
    status: int
    message: str = Field(description="what went wrong and what to do next")


class ErrorOut(BaseModel):
    error: ErrorBody


class SampleOut(BaseModel):
    id: str = Field(description="sha256 of the image bytes (content address)")
    label: str
    split: Literal["train", "holdout"]
    duplicate: bool = Field(description="true when these exact bytes were already stored")
    split_reason: str = Field(
        default="", description='why this split: "hash split", "balanced split" (its label\'s holdout kept near its '
        'share), or "near-duplicate of <id>" (a stored twin, same side)'
    )

    @classmethod
    def of(cls, s: StoredSample) -> SampleOut:
        return cls(id=s.id, label=s.label, split=s.split, duplicate=s.duplicate, split_reason=s.split_reason)


class BatchOut(BaseModel):
    items: list[SampleOut]
    created: int
    duplicates: int


class SampleMetaOut(BaseModel):
    id: str
    label: str
    split: Literal["train", "holdout"]
    size: int
    format: str
    width: int
    height: int
    received_at: str
    split_reason: str = Field(default="", description='"hash split", "balanced split" or '
                              '"near-duplicate of <id>" (its twin, same side)')
    uploader: str | None = Field(default=None, description="the token that stored it: admin | samples | insecure "
                                 "(null: stored before graft recorded it)")  # fmt: skip

    @classmethod
    def of(cls, s: SampleMeta) -> SampleMetaOut:
        return cls(**s.model_dump())


class StatsOut(BaseModel):
    labels: dict[str, dict[str, int]] = Field(description="{label: {train: n, holdout: m}}")
    total: int
    train: int
    holdout: int
    since_champion: int = Field(description="samples that arrived after the model in service took its snapshot")
    champion_version: str | None

    @classmethod
    def of(cls, s: SampleStats) -> StatsOut:
        return cls(**s.__dict__)


class DatasetRef(BaseModel):
    digest: str | None
    max_sample_seq: int | None


class JobOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    status: Literal["queued", "running", "succeeded", "held", "rejected", "failed"]
    phase: str
    progress: float
    trigger: str
    params: dict[str, Any] = Field(description="the request that started the job")
    config: dict[str, Any] | None = Field(description="the training configuration the job runs (graft train --config)")
    candidate_version: str | None
    champion_version: str | None
    metrics: dict[str, Any] = Field(description="candidate and champion on the same holdout")
    new_labels: list[str]
    gate: dict[str, Any] | None
    replay: dict[str, Any] | None = Field(
        default=None, description="the candidate on the champion's captured traffic (shadow replay), when it ran"
    )
    data_check: dict[str, Any] | None = Field(
        default=None, description="the model in service on the new samples: per label, how often it disagrees with "
        "them against its error rate on older holdout images; the flagged labels' samples to review (suspects: "
        "id, label, predicted, split, confidence and label_probability, the likeliest wrong label first)"
    )
    promoted: bool
    reason: str
    dataset: DatasetRef
    created_at: str
    started_at: str | None
    finished_at: str | None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls(
            id=job.id, status=job.status, phase=job.phase, progress=job.progress, trigger=job.trigger,
            params=job.params, config=job.config, candidate_version=job.candidate_version,
            champion_version=job.champion_version,
            metrics={"candidate": job.candidate_metrics, "champion": job.champion_metrics},
            new_labels=list((job.gate or {}).get("new_labels", [])), gate=job.gate, replay=job.replay,
            data_check=job.data_check, promoted=job.promoted,
            reason=job.reason, dataset=DatasetRef(digest=job.dataset_digest, max_sample_seq=job.max_sample_seq),
            created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        )  # fmt: skip


class JobAccepted(BaseModel):
    job_id: str
    status: str
    candidate_version: str | None
    href: str


class JobList(BaseModel):
    jobs: list[JobOut]


class ModelOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: str
    status: str = Field(description="training | failed | rejected | accepted")
    source: str = Field(description="job | import")
    default: bool = False
    deployed: bool
    labels: list[str]
    metrics: dict[str, Any]
    replay: dict[str, Any] | None = Field(default=None, description="its shadow replay before promotion")
    lineage: dict[str, Any]
    recipe: dict[str, Any]
    parent_version: str | None
    job_id: str | None
    dataset_digest: str | None
    num_train: int
    num_holdout: int
    created_at: str
    promoted_at: str | None = Field(default=None, description="when it last became the default")

    @classmethod
    def of(cls, view: ModelView) -> ModelOut:
        m = view.model
        return cls(
            version=m.version, status=m.status, source=m.source, default=view.default, deployed=m.deployed,
            labels=m.labels, metrics=m.metrics, replay=m.metrics.get("replay"), lineage=m.lineage, recipe=m.recipe,
            parent_version=m.parent_version,
            job_id=m.job_id, dataset_digest=m.dataset_digest, num_train=m.num_train, num_holdout=m.num_holdout,
            created_at=m.created_at, promoted_at=view.promoted_at,
        )  # fmt: skip


class DeploymentOut(BaseModel):
    seq: int
    version: str
    action: str
    previous_seq: int | None
    job_id: str | None
    at: str

    @classmethod
    def of(cls, d: Deployment) -> DeploymentOut:
        return cls(**d.model_dump())


class ModelsOut(BaseModel):
    model_name: str
    default: str | None
    models: list[ModelOut]
    history: list[DeploymentOut] = Field(description="every change of default: import, promote, rollback")
