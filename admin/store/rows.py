"""Typed rows of the admin's SQLite store: what the store hands the domain, instead of dicts and tuples."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

SampleSplit = Literal["train", "holdout"]
ModelStatus = Literal["training", "failed", "rejected", "accepted"]
JobStatus = Literal["queued", "running", "succeeded", "held", "rejected", "failed"]
DeployAction = Literal["import", "promote", "rollback"]
ACTIVE_JOB_STATUSES: tuple[JobStatus, ...] = ("queued", "running")
# Who made a change: the role of the token (or console session) behind it. Tokens are shared secrets, not people.
Actor = Literal["admin", "samples", "insecure"]


class _Row(BaseModel):
    model_config = ConfigDict(frozen=True)


class StoredSample(_Row):
    """The outcome of storing one upload: new, or the same bytes already stored under the same label."""

    id: str  # sha256 of the bytes: the content address and public id
    label: str
    split: SampleSplit
    duplicate: bool
    seq: int
    split_reason: str = ""  # "hash split", "balanced split", or "near-duplicate of <id>" (a stored twin, same side)


class SampleRef(_Row):
    """A stored sample as a dataset snapshot sees it."""

    id: str
    label: str
    split: SampleSplit
    path: Path  # absolute
    seq: int


class Label(_Row):
    """A label of the admin-owned set: a model in service knows it, or an admin approved it."""

    key: str  # NFKC, case-folded: what makes two spellings one label
    name: str  # the spelling samples are stored and trained under
    source: Literal["model", "admin"]
    created_at: str
    position: int | None = None  # the review page's key order


class SampleMeta(_Row):
    """A stored sample's public metadata."""

    id: str
    label: str
    split: SampleSplit
    size: int
    format: str
    width: int
    height: int
    received_at: str
    split_reason: str = ""
    uploader: Actor | None = None  # None: stored before graft recorded it (schema 8)


class AuditEntry(_Row):
    """One recorded change: who (a token's role), what, when, and what it was before."""

    id: int
    at: str
    actor: Actor
    action: str
    target: str
    detail: dict[str, Any] = {}


class ModelVersion(_Row):
    version: str
    status: ModelStatus
    source: str  # "job" or "import"
    job_id: str | None = None
    parent_version: str | None = None
    run_dir: Path | None = None
    mar_path: Path | None = None
    labels: list[str] = []
    metrics: dict[str, Any] = {}
    lineage: dict[str, Any] = {}
    recipe: dict[str, Any] = {}
    dataset_digest: str | None = None
    num_train: int = 0
    num_holdout: int = 0
    max_sample_seq: int = 0
    deployed: bool = False
    created_at: str
    updated_at: str


class Deployment(_Row):
    """One change of the default; ``previous_seq`` is the entry a rollback returns to."""

    seq: int
    version: str
    action: DeployAction
    previous_seq: int | None
    job_id: str | None
    at: str


class Job(_Row):
    id: str
    status: JobStatus
    phase: str
    progress: float
    trigger: str
    params: dict[str, Any] = {}
    config: dict[str, Any] | None = None  # the TrainConfig the job trains with (None before it is built)
    candidate_version: str | None = None
    champion_version: str | None = None
    candidate_metrics: dict[str, Any] | None = None
    champion_metrics: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    replay: dict[str, Any] | None = None  # the shadow replay on captured traffic, when one ran
    data_check: dict[str, Any] | None = None  # the model in service on the new samples (label_check.py)
    promoted: bool = False
    reason: str = ""
    dataset_digest: str | None = None
    max_sample_seq: int | None = None
    job_dir: Path | None = None
    pid: int | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_JOB_STATUSES


CaptureStatus = Literal["queued", "duplicate", "labelled", "skipped", "rejected", "deleted", "gone", "unreadable"]


class CaptureRow(_Row):
    """A captured served input as the admin indexed it (the files stay in the capture folder)."""

    id: str
    model_name: str
    model_version: str
    captured_at: float
    request_id: str
    image_file: str  # the segment file holding it
    predicted: str
    labels: list[str]
    scores: list[float]
    margin: float
    entropy: float
    pixels_sha: str | None
    phash: str | None
    status: CaptureStatus
    duplicate_of: str | None
    seen: int
    label: str | None
    sample_id: str | None
    reviewed_at: str | None
    file_offset: int = 0  # where in the segment, and how many bytes
    file_length: int = 0
    reviewed_by: Actor | None = None
    created_sample: bool = False  # the label decision stored a new sample
