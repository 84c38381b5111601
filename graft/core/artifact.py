"""The model artifact: a run folder that describes itself.

A run folder holds ``model.safetensors`` (the state dict), ``model.json`` (this module's
:class:`ModelCard`), ``metrics.json`` and plots. Training writes it; export, the TorchServe
handler and the admin service read it. Nothing about preprocessing or labels is duplicated
by hand anywhere else.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from graft import __version__
from graft.core.errors import ArtifactError
from graft.core.preprocessing import Preprocessing
from graft.core.util import utc_now, write_atomic

MODEL_JSON = "model.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_JSON = "metrics.json"
ONNX_FILE = "model.onnx"
# The statically quantized (QDQ, per-channel INT8) copy of model.onnx, written by `graft export --quantize int8`.
ONNX_INT8_FILE = "model.int8.onnx"
# A run whose head was averaged with the champion's keeps the refit's own model here (a run folder itself), so
# the gate can also judge what the new data alone taught (admin/domain/judge.py).
UNAVERAGED_DIR = "unaveraged"
SCHEMA_VERSION = 1
# A folder of thousands of stray files should not make model.json megabytes long; train.log lists them all.
MAX_SKIPPED_LISTED = 1000


def name_from_folder(path: Path) -> str:
    """A TorchServe model name from a run folder's name (``runs/ants bees`` -> ``ants_bees``): what ``graft
    serve`` and ``graft export`` call a model when no name is given."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).resolve().name).strip("_.-")
    return name[:64] or "model"


class Lineage(BaseModel):
    model_config = ConfigDict(extra="allow")

    dataset_digest: str
    dataset_path: str | None = None
    num_train: int = 0
    num_val: int = 0
    class_counts: dict[str, int] = Field(default_factory=dict)
    # Files under dataset_path training could not decode ({"path", "reason"}, at most MAX_SKIPPED_LISTED of
    # num_skipped): the export rebuilds the run's split without them instead of decoding the folder again.
    skipped: list[dict[str, str]] = Field(default_factory=list)
    num_skipped: int = 0
    num_transparent: int = 0  # used images with transparency, composited on preprocessing.background
    pretrained_weights: str = "none"
    parent_model: str | None = None
    code_version: str = Field(default_factory=lambda: code_version())
    started_at: str | None = None
    finished_at: str | None = None


class ModelCard(BaseModel):
    """The contents of ``model.json``."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    backbone: str
    num_classes: int = Field(gt=1)
    labels: list[str]
    weights_file: str = WEIGHTS_FILE
    preprocessing: Preprocessing
    recipe: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    lineage: Lineage
    created_at: str = Field(default_factory=lambda: utc_now())

    @field_validator("labels")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("labels must be unique")
        return v

    def model_post_init(self, __context: Any) -> None:
        if len(self.labels) != self.num_classes:
            raise ValueError(f"{len(self.labels)} labels for num_classes={self.num_classes}")


def code_version() -> str:
    """``graft X.Y.Z`` plus the git commit when running from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"graft {__version__}" + (f" ({sha})" if sha else "")


def write_card(run_dir: Path, card: ModelCard) -> Path:
    path = Path(run_dir) / MODEL_JSON
    write_atomic(path, (card.model_dump_json(indent=2) + "\n").encode(), fsync=False)
    return path


def read_card(run_dir: Path | str) -> ModelCard:
    path = Path(run_dir) / MODEL_JSON
    if not path.is_file():
        raise ArtifactError(f"{path} not found: is {run_dir} a run folder written by 'graft train'?")
    try:
        return ModelCard.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as e:
        raise ArtifactError(f"{path} is not a valid model card: {e}") from e


def save_weights(run_dir: Path, state_dict: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    path = Path(run_dir) / WEIGHTS_FILE
    # safetensors refuses shared storage; contiguous clones keep the file self-contained.
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}, str(path))
    return path


def load_model(run_dir: Path | str, device: str = "cpu") -> tuple[Any, ModelCard]:
    """Rebuild the trained model from a run folder (or an unpacked .mar): eval mode, on ``device``."""
    from safetensors.torch import load_file

    from graft.core.zoo import build_model

    card = read_card(run_dir)
    weights = Path(run_dir) / card.weights_file
    if not weights.is_file():
        raise ArtifactError(f"{weights} is missing: the run folder is incomplete, train again or copy it whole")
    model = build_model(card.backbone, card.num_classes)
    try:
        model.load_state_dict(load_file(str(weights), device=device), strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"{weights} does not fit backbone {card.backbone!r}: {e}") from e
    return model.to(device).eval(), card
