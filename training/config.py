"""The training recipe: one validated object, recorded verbatim in ``model.json``.

``graft train``'s flags are generated from these fields (training/cli.py), ``graft train --config FILE``
reads the same fields from a JSON file, and the admin builds one of these for every retraining job:
a setting that is not a field here cannot exist anywhere. Pydantic only (no torch): the admin imports it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from graft.core.errors import ConfigInvalidError
from graft.core.preprocessing import parse_color

# Fields that name files or folders: they describe where a run reads and writes, not how it trains, so they
# stay out of the recipe in model.json and can never be set through the admin API.
PATH_FIELDS = frozenset({"data", "manifest", "output", "init_from", "weights", "teacher"})
# Fields that describe the machine a run happens on, not the model it produces.
# (distributed_batch: how a run maps onto torchrun's processes; model.json records it under recipe.distributed.)
RUNTIME_FIELDS = frozenset({"device", "num_workers", "distributed_batch"})


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # data: an image folder, or a manifest written by the admin service
    data: Path | None = Field(None, description="DIR/<label>/*.jpg, or DIR/train/<label> + DIR/val/<label>")
    manifest: Path | None = Field(None, description="a dataset manifest (written by the admin service)")
    output: Path = Field(description="the run folder to write")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="validation share when the data has no val split")
    max_per_class: int | None = Field(None, gt=0, description="use at most N images per class and split")
    balance: Literal["loss", "sampler", "none"] = Field("loss", description="class imbalance: weighted loss/sampler")

    # model
    backbone: str = Field("efficientnet_lite0", description="zoo name ('graft backbones' lists them)")
    weights: str = Field("imagenet", description="imagenet | none | path to a state_dict")
    init_from: Path | None = Field(None, description="warm start from this run folder (its model becomes the parent)")

    # how much of the backbone trains: --freeze-until / --trainable-stages when given (at most one), else
    # the recipe: "auto" measures candidate depths on the validation split and keeps the best (training/auto.py),
    # "head" trains the head alone on the frozen backbone
    recipe: Literal["auto", "head"] = Field("auto", description="auto: choose the trained depth by measurement")
    auto_budget: float = Field(
        3.0, gt=0, le=100, description="auto: compute for the deeper candidates, in frozen passes over the data"
    )
    freeze_until: str | None = Field(None, description="freeze the stem through this stage (inclusive), e.g. layer3")
    trainable_stages: int | None = Field(None, ge=0, description="train the last N backbone stages (0 = head only)")
    frozen_bn: Literal["eval", "train"] = Field("eval", description="BatchNorm mode in frozen stages")

    # optimisation
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(3e-3, gt=0, description="learning rate of the head")
    lr_decay: float = Field(1.0, gt=0, le=1, description="per-stage LR ratio from the head towards the stem")
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    schedule: Literal["cosine", "onecycle", "step", "constant"] = "cosine"
    step_epochs: int = Field(7, gt=0, description="step schedule: epochs between LR drops")
    step_gamma: float = Field(0.1, gt=0, le=1, description="step schedule: factor per drop")
    warmup_epochs: float = Field(0.5, ge=0, description="linear LR warm-up, in epochs")
    head_warmup_epochs: int = Field(0, ge=0, description="head-only epochs before the trainable stages unfreeze")
    epochs: int = Field(15, gt=0)
    batch_size: int = Field(32, gt=0)
    patience: int = Field(5, ge=0, description="early stopping: epochs without improvement (0 = off)")
    head_seeds: int = Field(
        5, ge=1, le=20, description="a head-only recipe on the feature cache trains the head from N seeds and "
        "keeps their average, one model (1 = one seed)",
    )  # fmt: skip
    refit: bool = Field(
        True, description="after the validation split has chosen the epochs (and the depth), a head-only recipe on "
        "the feature cache trains its head again on training and validation images together",
    )  # fmt: skip
    distill: float = Field(
        0.0, ge=0, le=10, description="the refit also keeps the teacher's right answers (focal distillation, this "
        "weight; 0 = off): fewer retrainings that lose what the champion knew. The admin's teacher is the champion",
    )  # fmt: skip
    champion_share: float = Field(
        0.5, ge=0, lt=1, description="the refit's head is averaged with the teacher's, this share to the teacher's "
        "weights (0 = off; nothing without a teacher): an exponential average across retrainings. The admin's "
        "teacher is the champion, and its gate judges the refit's own head too",
    )  # fmt: skip
    teacher: Path | None = Field(None, description="distill from (or average with) this run folder (the admin sets "
                                 "its champion)")  # fmt: skip
    augment: bool = Field(False, description="random resized crops and flips (turns the feature cache off)")
    feature_cache: bool = Field(True, description="run frozen stages once per image (off: the whole network)")
    background: str | None = Field(
        None,
        description="colour transparent pixels are composited on, in training and serving alike: white, black, "
        "gray, #RRGGBB or R,G,B (unset: white, or a warm start's parent's)",
    )

    # runtime
    seed: int = Field(0, ge=0)
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    amp: bool = Field(True, description="bf16 autocast on CUDA")
    channels_last: bool = Field(True, description="channels_last memory format on CUDA")
    num_workers: int = Field(0, ge=0, description="data loader processes")
    distributed_batch: Literal["split", "per-process"] = Field(
        "split",
        description="under torchrun: split batch_size across the processes (the recipe is unchanged), or give "
        "each process batch_size images and scale the learning rate by the number of processes",
    )

    @field_validator("background")
    @classmethod
    def _color(cls, v: str | None) -> str | None:
        if v is not None:
            parse_color(v)  # ValueError names the accepted forms
        return v

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if (self.data is None) == (self.manifest is None):
            raise ValueError("give exactly one of data (an image folder) or manifest (a dataset manifest)")
        if self.freeze_until is not None and self.trainable_stages is not None:
            raise ValueError("give at most one of freeze_until and trainable_stages")
        return self

    def card_recipe(self) -> dict[str, Any]:
        """What goes into ``model.json``: everything but local paths, and which fields were chosen explicitly."""
        recipe = self.model_dump(mode="json", exclude=set(PATH_FIELDS - {"weights"}))
        recipe["explicit"] = sorted(self.model_fields_set - PATH_FIELDS - RUNTIME_FIELDS)
        return recipe


def recipe_fields() -> list[str]:
    """Fields that say how a model trains: what a retraining may replay or override."""
    return [name for name in TrainConfig.model_fields if name not in PATH_FIELDS | RUNTIME_FIELDS]


def build_config(values: dict[str, Any]) -> TrainConfig:
    """A validated config; the error names every bad field (``ConfigInvalidError``, a 422 at the API)."""
    try:
        return TrainConfig(**values)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in e.errors()
        )
        raise ConfigInvalidError(f"invalid training configuration: {problems}") from e


def read_config_file(path: Path) -> dict[str, Any]:
    """The fields a ``graft train --config FILE`` JSON file sets (validated later, with the flags on top)."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigInvalidError(f"cannot read the training configuration {path}: {e}") from e
    if not isinstance(values, dict):
        raise ConfigInvalidError(f"{path} must hold a JSON object of training settings")
    return values


def write_config_file(config: TrainConfig, path: Path) -> Path:
    """Write only the fields that were set, so the file replays the same choices (defaults stay defaults)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.model_dump_json(indent=2, exclude_unset=True) + "\n")
    return path
