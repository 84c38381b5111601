"""What a retraining job trains with: a :class:`training.config.TrainConfig` the admin builds and validates itself.

Layers, later ones winning: the champion's explicit choices (its ``model.json`` recipe; the backbone and
its pretrained weights always, since they make the model what it is), then the service's defaults
(``GRAFT_TRAIN_ARGS``), then the request. What ``--recipe auto`` chose for the champion is not an
explicit choice, so it is not replayed: auto decides again on the new snapshot. A layer that sets
``recipe`` without a depth flag drops the depth flags of the layers below it. Paths (data, manifest,
output, weights, init-from) come only from the job itself, never from a request: :class:`RecipeOverrides`
has no such field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from admin.store.rows import ModelVersion
from training.config import PATH_FIELDS, RUNTIME_FIELDS, TrainConfig, build_config, recipe_fields

# Always replayed: the architecture and where its starting weights came from.
_IDENTITY = ("backbone", "weights")


def _overrides_model() -> type[BaseModel]:
    """Every recipe field of TrainConfig, optional; unknown names are refused (a 422 naming the field)."""
    fields: dict[str, Any] = {}
    for name in recipe_fields():
        info = TrainConfig.model_fields[name]
        annotation: Any = info.annotation
        fields[name] = (annotation | None, Field(None, description=info.description))
    return create_model(
        "RecipeOverrides",
        __config__=ConfigDict(extra="forbid"),
        __doc__="Training settings of one job (any `graft train` setting but paths and the device).",
        **fields,
    )


RecipeOverrides = _overrides_model()


class RetrainRequest(BaseModel):
    """What ``POST /v1/retrain`` may ask; every field falls back to the champion's recipe and the settings."""

    model_config = ConfigDict(extra="forbid")

    epochs: int | None = Field(default=None, ge=1, le=1000)
    backbone: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]{1,63}$")
    weights: Literal["imagenet", "none"] | None = Field(
        default=None, description="pretrained weights of a new backbone: the zoo's ImageNet weights or none"
    )
    seed: int | None = Field(default=None, ge=0)
    warm_start: bool = Field(default=False, description="start from the champion's weights instead of the zoo backbone")
    overrides: RecipeOverrides = Field(  # type: ignore[valid-type]
        default_factory=RecipeOverrides,
        description='other training settings, e.g. {"lr": 0.003, "trainable_stages": 1}',
    )


    @field_validator("overrides", mode="before")
    @classmethod
    def _known_settings(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for key in v:
                if key in PATH_FIELDS or key in RUNTIME_FIELDS:
                    raise ValueError(f"{key!r} is set by the job itself and cannot be overridden")
                if key not in RecipeOverrides.model_fields:
                    raise ValueError(f"{key!r} is not a training setting; known: {', '.join(recipe_fields())}")
        return v


def replayed(champion: ModelVersion | None) -> dict[str, Any]:
    """The champion's choices a retraining keeps: what was chosen explicitly, plus its backbone and weights.

    A card written before graft recorded ``explicit`` replays every recipe setting it holds.
    """
    if champion is None:
        return {}
    recipe = champion.recipe
    allowed = set(recipe_fields()) | set(_IDENTITY)
    explicit = recipe.get("explicit")
    names = [*(explicit if isinstance(explicit, list) else recipe), *_IDENTITY]
    keep = [k for k in names if k in allowed and k not in RUNTIME_FIELDS and recipe.get(k) is not None]
    return {k: recipe[k] for k in keep if not isinstance(recipe[k], dict | list)}


# How much of the backbone trains: explicit depth flags win over ``recipe`` (training/config.py).
_DEPTH = ("freeze_until", "trainable_stages")


def _layer(values: dict[str, Any], layer: dict[str, Any]) -> None:
    """Put ``layer`` over ``values``. A layer that names a ``recipe`` and no depth flag drops the depth flags
    below it: ``{"recipe": "auto"}`` over a champion trained with ``--trainable-stages 2`` means auto."""
    if "recipe" in layer and not any(k in layer for k in _DEPTH):
        for k in _DEPTH:
            values.pop(k, None)
    values.update(layer)


def build_train_config(
    manifest: Path,
    output: Path,
    champion: ModelVersion | None,
    defaults: dict[str, Any],
    request: RetrainRequest,
    device: str | None = None,
) -> TrainConfig:
    """The validated config of one job; :class:`graft.core.errors.ConfigInvalidError` (422) names a bad field."""
    values: dict[str, Any] = replayed(champion)
    _layer(values, defaults)
    overrides: BaseModel = request.overrides
    _layer(values, overrides.model_dump(exclude_none=True))
    values.update(request.model_dump(include={"epochs", "backbone", "weights", "seed"}, exclude_none=True))
    if request.backbone is not None and request.weights is None and champion is not None:
        values["weights"] = "imagenet"  # a new backbone cannot start from the champion backbone's weights file
    values.update(manifest=manifest, output=output)
    if request.warm_start and champion is not None and champion.run_dir is not None:
        values["init_from"] = champion.run_dir
    if device is not None:
        values["device"] = device
    config = build_config(values)
    if (config.distill or config.champion_share) and champion is not None and champion.run_dir is not None:
        # keep what the champion knew (training/distill.py); a path the admin chose, never a request's
        config = build_config({**config.model_dump(exclude_unset=True), "teacher": champion.run_dir})
    return config
