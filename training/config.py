"""The training recipe: one validated object, recorded verbatim in ``model.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # data: an image folder, or a manifest written by the admin service
    data: Path | None = None
    manifest: Path | None = None
    output: Path
    val_fraction: float = Field(0.2, gt=0, lt=1)
    max_per_class: int | None = Field(None, gt=0, description="use at most this many images per class and split")
    balance: Literal["loss", "sampler", "none"] = "loss"

    # model
    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    init_from: Path | None = Field(None, description="warm start from this run folder (its model becomes the parent)")

    # freezing: at most one of freeze_until / trainable_stages; neither = head only
    freeze_until: str | None = None
    trainable_stages: int | None = Field(None, ge=0)
    frozen_bn: Literal["eval", "train"] = "eval"

    # optimisation
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(3e-3, gt=0, description="learning rate of the head")
    lr_decay: float = Field(1.0, gt=0, le=1, description="per-stage ratio from the head towards the stem")
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    schedule: Literal["cosine", "onecycle", "step", "constant"] = "cosine"
    step_epochs: int = Field(7, gt=0, description="step schedule: epochs between LR drops")
    step_gamma: float = Field(0.1, gt=0, le=1, description="step schedule: factor per drop")
    warmup_epochs: float = Field(0.5, ge=0)
    head_warmup_epochs: int = Field(0, ge=0, description="head-only epochs before the trainable stages unfreeze")
    epochs: int = Field(15, gt=0)
    batch_size: int = Field(32, gt=0)
    patience: int = Field(5, ge=0, description="early stopping: epochs without improvement (0 = off)")
    augment: bool = False
    feature_cache: Literal["auto", "off"] = "auto"

    # runtime
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    num_workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if (self.data is None) == (self.manifest is None):
            raise ValueError("give exactly one of data (an image folder) or manifest (a dataset manifest)")
        if self.freeze_until is not None and self.trainable_stages is not None:
            raise ValueError("give at most one of freeze_until and trainable_stages")
        return self

    def recipe(self) -> dict[str, object]:
        """What goes into ``model.json``: everything but local paths."""
        return self.model_dump(mode="json", exclude={"data", "manifest", "output", "init_from"})
