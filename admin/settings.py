"""Settings of the admin service: one pydantic-settings object, read from ``GRAFT_*`` variables.

Nothing is read at import time: :func:`load_settings` builds the object when a caller asks for it,
so tests and ``graft serve`` can pass overrides without touching the environment.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from graft.core.errors import ConfigError
from graft.core.images import MAX_IMAGE_PIXELS

log = logging.getLogger(__name__)

MIN_TOKEN_LENGTH = 16
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
DEV_TOKEN_FILE = "admin.token"


class AdminSettings(BaseSettings):
    """Every knob of the control plane. Environment: ``GRAFT_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="GRAFT_", extra="ignore", validate_default=True)

    # --- HTTP service
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(default=8090, ge=0, le=65535)
    # --- auth: a token from the environment or from a secret file (Kubernetes mounts secrets as files)
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = None
    samples_token: SecretStr | None = None
    samples_token_file: Path | None = None
    insecure_dev: bool = False  # no auth at all; only for a laptop, and it says so loudly
    # --- storage
    state_dir: Path = Path("runs/admin")  # SQLite file, samples, jobs, run folders
    # Where the SQLite file lives when not in state_dir: SQLite in WAL mode needs a local or block volume
    # (ReadWriteOnce), not a network file system; the samples and run folders may live on one.
    db_dir: Path | None = None
    model_store: Path = Path("model_store")
    # The TorchServe model the admin manages. None: the one model name in the store (refused when there are
    # several), remembered in the registry from then on.
    model_name: str | None = Field(default=None, pattern=MODEL_NAME_PATTERN)
    # Where retired archives go: out of the model store, so a restart loads only what serves or may be rolled
    # back to (None: STATE_DIR/archive).
    archive_dir: Path | None = None
    # --- the data the first model was trained on, replayed in every retraining
    base_data: Path | None = None  # image folder: DIR/train|val/<label> (val = holdout) or DIR/<label>
    base_manifest: Path | None = None  # or a dataset manifest (its val items are holdout)
    initial_run: Path | None = None  # run folder of the model in service when the registry is empty
    initial_version: str = Field(default="1", pattern=r"^[0-9]+$")
    # --- samples
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    # balanced: each label's holdout within one image of its share; hash: the pixels' hash alone (the same picture
    # on the same side in every deployment, but a standard deviation of 6 points on 40 uploads)
    holdout_split: Literal["balanced", "hash"] = "balanced"
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_batch_files: int = Field(default=64, gt=0)
    max_batch_bytes: int = Field(default=64 * 1024 * 1024, gt=0)  # a whole batch request
    body_timeout_s: float = Field(default=30.0, gt=0)  # a whole request body must arrive within this
    max_connections: int = Field(default=64, gt=0)  # connections with a request in progress; 503 beyond (uvicorn)
    # A request's headers must arrive within this (from the connection's start or its last response), and one
    # client address keeps at most this many connections that have not sent a whole request (admin/connections.py;
    # 16 x max_connections of those in all, within a quarter of the file descriptors).
    header_timeout_s: float = Field(default=10.0, gt=0, le=300)
    max_idle_per_client: int = Field(default=16, ge=1)
    api_docs: bool = False  # /docs, /redoc, /openapi.json (behind the admin token) for development
    max_image_pixels: int = Field(default=MAX_IMAGE_PIXELS, gt=0)
    # Decoded pixels one upload request may cost, counted on the headers before anything is decoded.
    max_batch_pixels: int = Field(default=256_000_000, gt=0)
    # --- labels (the admin owns the label set; see admin/domain/labels.py)
    min_label_samples: int = Field(default=10, ge=1)  # training samples before a new label takes part
    promote_new_labels: bool = False  # a candidate that adds labels waits for an admin unless this is on
    # --- retraining
    # trainjob: a Kubeflow Trainer TrainJob, pytorchjob: a Training Operator PyTorchJob (admin/runners/, GRAFT_KUBE_*)
    runner: Literal["local", "kubernetes", "trainjob", "pytorchjob"] = "local"
    # Default training settings of every job (GRAFT_TRAIN_ARGS='{"epochs": 10}'): TrainConfig recipe fields only.
    train_args: dict[str, Any] = Field(default_factory=dict)
    # The program before "train ...": default [python, -m, graft.cli]; e.g. torchrun for several GPUs.
    train_command: list[str] | None = None
    job_timeout_s: float = Field(default=3600.0, gt=0)
    job_poll_s: float = Field(default=1.0, gt=0)
    auto_retrain_after: int = Field(default=0, ge=0)  # 0 = off
    eval_device: str = "cpu"
    # --- the gate (admin/domain/gate.py): a paired comparison on the holdout images neither model saw
    gate_policy: Literal["non_inferior", "better", "accuracy"] = "non_inferior"
    gate_alpha: float = Field(default=0.05, gt=0.0, lt=0.5)  # significance level of the paired tests
    gate_tolerance: float = Field(default=0.0, ge=0.0, le=1.0)  # gate_policy=accuracy: the accuracy drop allowed
    gate_floor: float = Field(default=0.0, ge=0.0, le=1.0)
    gate_min_holdout: int = Field(default=1, ge=1)
    # --- the data check before a candidate serves (admin/domain/label_check.py): the model in service on the new
    # samples. hold: a flagged label holds the candidate for an admin; note: only said in the report; off.
    label_check: Literal["hold", "note", "off"] = "hold"
    label_check_alpha: float = Field(default=0.01, gt=0.0, lt=0.5)  # Holm-corrected over the labels
    label_check_max: int = Field(default=500, ge=10)  # new samples (and older holdout images) checked per label
    # --- rollout (TorchServe management API; kserve: graft's KServe runtime, admin/rollouts/kserve.py)
    rollout: Literal["torchserve", "kubernetes", "kserve", "none"] = "torchserve"
    kserve_url: str = "http://127.0.0.1:8085"  # the KServe runtime's HTTP port (v1, v2 and /graft/v1 management)
    kserve_key_file: Path | None = None  # its key_file.json; None = it runs without tokens
    torchserve_management_url: str = "http://127.0.0.1:8081"
    torchserve_inference_url: str = "http://127.0.0.1:8080"
    torchserve_key_file: Path | None = None  # key_file.json; None = TorchServe runs without tokens
    torchserve_timeout_s: float = Field(default=300.0, gt=0)
    keep_versions: int = Field(default=2, ge=1)  # the default plus rollback targets kept loaded
    # After a swap, the old version's queue must empty and its last batch finish before it is unregistered.
    drain_grace_s: float = Field(default=5.0, ge=0.0)
    smoke_images: int = Field(default=4, ge=1)
    # --- production feedback: captured traffic, the review queue, shadow replay and drift
    # Where the inference workers write captures (graft serve --capture-rate; None: STATE_DIR/captures).
    capture_dir: Path | None = None
    capture_scan_s: float = Field(default=5.0, gt=0)  # how often new captures are indexed
    # Rows of undecided captures the index keeps (newest first): tiny images fit a disk budget by the million.
    capture_index_max: int = Field(default=100_000, ge=100)
    # Niceness the indexing thread adds to the process's: it runs on the cores the workers leave idle (0: as the API).
    capture_nice: int = Field(default=10, ge=0, le=19)
    # Replayed to a candidate before it becomes the default (0 = no replay); optional gate on the agreement.
    replay_captures: int = Field(default=300, ge=0)
    replay_min_agreement: float | None = Field(default=None, ge=0.0, le=1.0)
    drift_window_s: float = Field(default=3600.0, gt=0)  # one window of traffic compared with the holdout
    drift_min_captures: int = Field(default=30, ge=1)  # a window with fewer captures has no verdict
    low_margin: float = Field(default=0.2, gt=0.0, lt=1.0)  # an answer with a smaller top-1/top-2 margin is unsure
    # Start a job when the latest window's PSI reaches this (None = off), at most once per cooldown.
    retrain_on_drift_psi: float | None = Field(default=None, gt=0.0)
    drift_retrain_cooldown_s: float = Field(default=6 * 3600.0, ge=0.0)
    # --- the web console (/console)
    console_session_minutes: float = Field(default=480.0, gt=0, le=7 * 24 * 60)
    # Secure cookies: "auto" when the request came over TLS (or X-Forwarded-Proto says so), or always/never.
    console_secure_cookie: Literal["auto", "always", "never"] = "auto"

    @field_validator("train_args")
    @classmethod
    def _recipe_only(cls, v: dict[str, Any]) -> dict[str, Any]:
        from training.config import recipe_fields

        if unknown := sorted(set(v) - set(recipe_fields())):
            raise ValueError(f"train_args {unknown} are not training settings a job may set; known: {recipe_fields()}")
        return v

    @field_validator("admin_token", "samples_token")
    @classmethod
    def _strip_token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        return SecretStr(v.get_secret_value().strip())

    def resolved_admin_token(self) -> str | None:
        return _token(self.admin_token, self.admin_token_file, "admin")

    def resolved_samples_token(self) -> str | None:
        return _token(self.samples_token, self.samples_token_file, "samples")

    @property
    def db_path(self) -> Path:
        return (self.db_dir or self.state_dir) / "admin.sqlite3"

    @property
    def archive_path(self) -> Path:
        return self.archive_dir or self.state_dir / "archive"

    @property
    def capture_path(self) -> Path:
        return self.capture_dir or self.state_dir / "captures"

    def check(self) -> None:
        """Refuse settings the service must not start with; called by ``create_app``."""
        admin, samples = self.resolved_admin_token(), self.resolved_samples_token()
        if self.insecure_dev:
            if not _loopback(self.admin_host):
                raise ConfigError(
                    f"insecure_dev (no authentication) is refused on admin_host {self.admin_host!r}: it is allowed"
                    " only on a loopback address (127.0.0.1, ::1, localhost); set GRAFT_ADMIN_TOKEN instead"
                )
            log.warning(
                "INSECURE: the admin API runs without authentication (insecure_dev); never do this in production"
            )
            return
        if admin is None:
            raise ConfigError(
                "no admin token: set GRAFT_ADMIN_TOKEN or GRAFT_ADMIN_TOKEN_FILE "
                "(or, on a machine of your own, `graft serve --dev-token` generates one into the state folder)"
            )
        for name, value in (("admin", admin), ("samples", samples)):
            if value is not None and len(value) < MIN_TOKEN_LENGTH:
                raise ConfigError(f"the {name} token is shorter than {MIN_TOKEN_LENGTH} characters: use a random one")
        if samples is not None and samples == admin:
            raise ConfigError("the samples token must differ from the admin token: it is the less privileged one")
        if self.base_data is not None and self.base_manifest is not None:
            raise ConfigError("give base_data or base_manifest, not both")


def _loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def _token(value: SecretStr | None, file: Path | None, name: str) -> str | None:
    if value is not None:
        return value.get_secret_value()
    if file is None:
        return None
    try:
        text = Path(file).read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the {name} token file {file}: {e}") from e
    if not text:
        raise ConfigError(f"the {name} token file {file} is empty")
    return text


def load_settings(**overrides: Any) -> AdminSettings:
    """Settings from the environment, with explicit ``overrides`` (None values ignored) on top."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return AdminSettings(**given)
    except ValueError as e:  # pydantic's ValidationError: one readable line instead of a traceback
        raise ConfigError(f"invalid admin settings: {e}") from e
