"""Image decoding: formats and modes converted, every bad image refused with its own typed error."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from graft.core.errors import NotAnImageError, TooManyPixelsError, TruncatedImageError, UnsupportedFormatError
from graft.core.images import decode_rgb, open_image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


RED = (200, 30, 30)


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "L"),
     ("WEBP", "RGB"), ("BMP", "RGB"), ("GIF", "P")],
)
def test_formats_and_modes_become_rgb(fmt, mode):
    img = Image.new("RGB", (64, 48), RED).convert(mode)
    out = decode_rgb(encode(img, fmt), max_pixels=10_000)
    assert out.mode == "RGB"
    assert out.size == (64, 48)


def test_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (32, 32), c).convert("P") for c in (RED, (20, 200, 20))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    r, g, _ = decode_rgb(data, max_pixels=10_000).getpixel((5, 5))
    assert r > 150 and g < 80


def test_jpeg_draft_decodes_large_photos_smaller_but_not_below_target():
    data = encode(Image.new("RGB", (2048, 1536), RED), "JPEG")
    out = decode_rgb(data, max_pixels=10_000_000, draft_size=256)
    assert out.size == (512, 384)  # 1/4 scale: both sides still >= 256
    assert decode_rgb(data, max_pixels=10_000_000).size == (2048, 1536)


def test_pixel_limit_checked_from_the_header_without_touching_pil_global():
    before = Image.MAX_IMAGE_PIXELS
    data = encode(Image.new("1", (4000, 3000)), "PNG")  # 12 Mpx in a few kB: a small decompression bomb
    with pytest.raises(TooManyPixelsError, match="4000x3000") as e:
        open_image(data, max_pixels=10_000_000)
    assert e.value.status_code == 413
    assert before == Image.MAX_IMAGE_PIXELS


def test_extreme_aspect_ratio_refused():
    data = encode(Image.new("RGB", (5100, 100)), "PNG")
    with pytest.raises(TooManyPixelsError, match="aspect"):
        decode_rgb(data, max_pixels=10_000_000)


def test_truncated_jpeg():
    data = encode(Image.new("RGB", (256, 256), RED), "JPEG", quality=95)
    with pytest.raises(TruncatedImageError) as e:
        decode_rgb(data[: len(data) // 2], max_pixels=10_000_000)
    assert e.value.status_code == 400
    assert e.value.reason == "truncated_image"


def test_truncated_png():
    import numpy as np

    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    data = encode(noise, "PNG")
    with pytest.raises(TruncatedImageError):
        decode_rgb(data[: len(data) // 2], max_pixels=10_000_000)


def test_unsupported_format_is_named():
    data = encode(Image.new("RGB", (16, 16)), "TIFF")
    with pytest.raises(UnsupportedFormatError, match="TIFF") as e:
        decode_rgb(data, max_pixels=10_000)
    assert e.value.status_code == 415


@pytest.mark.parametrize("data", [b"hello world", b"\x00" * 64, b'{"data": 1}'])
def test_not_an_image(data):
    with pytest.raises(NotAnImageError) as e:
        decode_rgb(data, max_pixels=10_000)
    assert e.value.status_code == 415


def test_jpeg_magic_without_a_header_is_refused():
    with pytest.raises((NotAnImageError, TruncatedImageError)) as e:
        decode_rgb(b"\xff\xd8\xff", max_pixels=10_000)
    assert 400 <= e.value.status_code < 500
