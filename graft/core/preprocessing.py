"""How an image becomes the model's input tensor: one type, stored verbatim in ``model.json``.

The zoo says what each backbone expects, training records it in the model card, and the handler
reads it back from the card: nothing about preprocessing is written twice by hand.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What transparent pixels are composited on when a card does not say (cards written before it was recorded,
# the admin's fingerprints): white, what browsers and image viewers show behind a transparent PNG.
WHITE = (255, 255, 255)
_NAMED = {"white": WHITE, "black": (0, 0, 0), "gray": (128, 128, 128), "grey": (128, 128, 128)}


def parse_color(text: str) -> tuple[int, int, int]:
    """``white``, ``black``, ``gray``, ``#RRGGBB`` or ``R,G,B`` (0-255) as an RGB triple; ValueError says the forms."""
    value = text.strip().lower()
    if value in _NAMED:
        return _NAMED[value]
    try:
        if value.startswith("#") and len(value) == 7:
            rgb = tuple(int(value[i : i + 2], 16) for i in (1, 3, 5))
        else:
            rgb = tuple(int(part) for part in value.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"colour {text!r}: give white, black, gray, #RRGGBB or R,G,B with values 0-255")
    return rgb[0], rgb[1], rgb[2]


class Preprocessing(BaseModel):
    """Composite transparency over ``background``, resize the short side to ``resize``, centre-crop ``crop``,
    scale to [0, 1], normalise. Cards written before ``background`` was recorded load with white."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resize: int = Field(256, gt=0)
    crop: int = Field(224, gt=0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    background: tuple[int, int, int] = WHITE

    @field_validator("background")
    @classmethod
    def _rgb(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if not all(0 <= c <= 255 for c in v):
            raise ValueError("background values must be 0-255 (R, G, B)")
        return v

    @field_validator("std")
    @classmethod
    def _positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in v):
            raise ValueError("std values must be positive")
        return v
