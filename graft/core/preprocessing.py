"""How an image becomes the model's input tensor: one type, stored verbatim in ``model.json``.

The zoo says what each backbone expects, training records it in the model card, and the handler
reads it back from the card: nothing about preprocessing is written twice by hand.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocessing(BaseModel):
    """Resize the short side to ``resize``, centre-crop ``crop``, scale to [0, 1], normalise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resize: int = Field(256, gt=0)
    crop: int = Field(224, gt=0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    @field_validator("std")
    @classmethod
    def _positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in v):
            raise ValueError("std values must be positive")
        return v
