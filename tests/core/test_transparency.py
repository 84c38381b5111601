"""One decode policy for transparency: composited over the card's background, never dropped."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from graft.core.artifact import ModelCard
from graft.core.images import decode_frame, decode_rgb, flatten, has_transparency
from graft.core.preprocessing import WHITE, Preprocessing, parse_color
from tests.support.images import encode


def _icon(mode: str = "RGBA") -> Image.Image:
    """A black square in the middle of 16x16 transparent pixels (which store black, as most tools write them)."""
    img = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    img.paste((0, 0, 0, 255), (4, 4, 12, 12))
    return img if mode == "RGBA" else img.convert(mode)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_alpha_is_composited_on_white_by_default(fmt: str) -> None:
    out = decode_rgb(encode(_icon(), fmt, lossless=True) if fmt == "WEBP" else encode(_icon(), fmt))
    assert out.getpixel((0, 0)) == WHITE, "transparent pixels show the background, not the black they store"
    assert out.getpixel((8, 8)) == (0, 0, 0)


def test_background_is_configurable_and_half_alpha_blends() -> None:
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    out = decode_rgb(encode(img, "PNG"), background=(200, 0, 0))
    r, g, b = out.getpixel((1, 1))  # type: ignore[misc]
    assert 95 <= r <= 105 and g == 0 and b == 0


def test_palette_and_grey_transparency_are_composited_too() -> None:
    gif = _icon().convert("RGB").quantize(4)
    gif.info["transparency"] = gif.getpixel((0, 0))
    assert decode_rgb(encode(gif, "GIF", transparency=gif.getpixel((0, 0)))).getpixel((0, 0)) == WHITE
    la = encode(_icon("LA"), "PNG")
    assert decode_rgb(la).getpixel((0, 0)) == WHITE and decode_rgb(la).getpixel((8, 8)) == (0, 0, 0)


def test_transparency_means_a_pixel_that_is_not_opaque() -> None:
    _, img = decode_frame(encode(Image.new("RGBA", (8, 8), (10, 20, 30, 255)), "PNG"))
    assert img.mode == "RGBA" and not has_transparency(img)
    _, img = decode_frame(encode(_icon(), "PNG"))
    assert has_transparency(img)
    assert flatten(img, (0, 0, 0)).getextrema() == ((0, 0), (0, 0), (0, 0))  # black on black: blank


def test_preprocessing_records_the_background_and_old_cards_load_white() -> None:
    old = {"resize": 256, "crop": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}
    assert Preprocessing.model_validate(old).background == WHITE
    card = ModelCard(backbone="x", num_classes=2, labels=["a", "b"], lineage={"dataset_digest": "d"},  # type: ignore[arg-type]
                     preprocessing=Preprocessing(background=(0, 0, 0)))  # fmt: skip
    again = ModelCard.model_validate(json.loads(card.model_dump_json()))
    assert again.preprocessing.background == (0, 0, 0)
    with pytest.raises(ValueError, match="0-255"):
        Preprocessing(background=(0, 0, 256))


@pytest.mark.parametrize(("text", "rgb"), [("white", WHITE), ("Black", (0, 0, 0)), ("#FF8000", (255, 128, 0)),
                                           ("10, 20,30", (10, 20, 30))])  # fmt: skip
def test_colours_parse(text: str, rgb: tuple[int, int, int]) -> None:
    assert parse_color(text) == rgb


@pytest.mark.parametrize("text", ["pink", "#12345", "1,2", "1,2,300", ""])
def test_bad_colours_say_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="#RRGGBB or R,G,B"):
        parse_color(text)
