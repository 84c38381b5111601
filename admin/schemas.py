"""Request and response bodies of the admin API (they are also its OpenAPI documentation)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Flags the job sets itself: a request may not point training at other data or folders.
_RESERVED_FLAGS = {"manifest", "data", "output", "init_from", "device"}


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


class BatchOut(BaseModel):
    items: list[SampleOut]
    created: int
    duplicates: int


class StatsOut(BaseModel):
    labels: dict[str, dict[str, int]] = Field(description="{label: {train: n, holdout: m}}")
    total: int
    train: int
    holdout: int
    since_champion: int = Field(description="samples that arrived after the model in service took its snapshot")
    champion_version: str | None


class RetrainIn(BaseModel):
    """Optional body of POST /v1/retrain; every field falls back to the champion's recipe and settings."""

    model_config = ConfigDict(extra="forbid")

    epochs: int | None = Field(default=None, ge=1, le=1000)
    backbone: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]{1,63}$")
    weights: str | None = Field(default=None, max_length=4096, description="imagenet | none | path to a state_dict")
    seed: int | None = Field(default=None, ge=0)
    warm_start: bool = Field(default=False, description="start from the champion's weights instead of the zoo backbone")
    overrides: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description='other `graft train` flags, e.g. {"lr": 0.003, "trainable_stages": 1}'
    )

    @field_validator("overrides")
    @classmethod
    def _flags(cls, v: dict[str, Any]) -> dict[str, Any]:
        import re

        for key in v:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", key):
                raise ValueError(f"{key!r} is not a training flag name (lower_snake_case)")
            if key in _RESERVED_FLAGS:
                raise ValueError(f"{key!r} is set by the job itself and cannot be overridden")
            if isinstance(v[key], str) and v[key].startswith("-"):
                raise ValueError(f"the value of {key!r} may not start with '-' (it would read as another flag)")
        return v

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str | None) -> str | None:
        if v is not None and (not v or v.startswith("-")):
            raise ValueError("weights must be imagenet, none or a path (not empty, not starting with '-')")
        return v


class JobOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    status: Literal["queued", "running", "succeeded", "rejected", "failed"]
    phase: str
    progress: float
    trigger: str
    candidate_version: str | None
    champion_version: str | None
    metrics: dict[str, Any] = Field(description="candidate and champion on the same holdout")
    new_labels: list[str]
    promoted: bool
    reason: str


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
    lineage: dict[str, Any]
    recipe: dict[str, Any]
    parent_version: str | None
    job_id: str | None
    dataset_digest: str | None
    num_train: int
    num_holdout: int
    created_at: str


class ModelsOut(BaseModel):
    model_name: str
    default: str | None
    models: list[ModelOut]
    history: list[dict[str, Any]] = Field(description="every change of default: import, promote, rollback")
