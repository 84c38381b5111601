"""Encoded image bytes -> RGB image, with explicit limits; every refusal is a typed :class:`BadInputError`.

Images come from untrusted clients. The pixel limit is checked on the header, before any pixel is
decoded, and without touching ``PIL.Image.MAX_IMAGE_PIXELS`` (the process-wide guard stays on).
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from graft.errors import NotAnImageError, TooManyPixelsError, TruncatedImageError, UnsupportedFormatError

log = logging.getLogger(__name__)

# PIL plugin ids tried on open. Multi-picture JPEGs from cameras open through the JPEG plugin and report
# format "MPO", so JPEG_FORMATS lists both.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
ACCEPTED = "JPEG, PNG, WebP, BMP, GIF"
JPEG_FORMATS = ("JPEG", "MPO")
# Resize scales the short side up to the model's size; a very thin image would become huge. 50:1 keeps the
# resized area under 50 x resize^2 pixels while letting panoramas and tall screenshots through.
MAX_ASPECT_RATIO = 50


@dataclass(frozen=True)
class Header:
    format: str
    width: int
    height: int
    mode: str


def _identify_other(data: bytes) -> str | None:
    """The format name when PIL recognises bytes we do not accept, else None."""
    try:
        # Header parsing only (no pixel decoding) to tell "unsupported format" from "not an image".
        with Image.open(io.BytesIO(data)) as img:
            return str(img.format)
    except Exception:  # any parser failure on untrusted bytes just means "not recognised"
        return None


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header of an allowed format and check the limits; pixels are not decoded yet."""
    try:
        with warnings.catch_warnings():
            # Our own limit is the policy; PIL's warning would only duplicate it in the worker log.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as e:
        raise TooManyPixelsError(f"image too large: {e}") from e
    except UnidentifiedImageError as e:
        other = _identify_other(data)
        if other is not None:
            raise UnsupportedFormatError(
                f"unsupported image format {other}; send one of {ACCEPTED}"
            ) from e
        raise NotAnImageError(f"body is not an image ({len(data)} bytes, starting {data[:8]!r})") from e
    except Exception as e:  # a malformed header can raise anything from a format plugin
        raise TruncatedImageError(f"image header is truncated or corrupt: {e}") from e
    check_dimensions(img.width, img.height, max_pixels)
    return img


def check_dimensions(width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise TruncatedImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise TooManyPixelsError(
            f"image has {width}x{height} = {width * height} pixels, the limit is {max_pixels}; send a smaller image"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise TooManyPixelsError(
            f"image is {width}x{height}; aspect ratios beyond {MAX_ASPECT_RATIO}:1 are refused"
            " (resizing its short side would allocate too much)"
        )


def header(img: Image.Image) -> Header:
    return Header(format=str(img.format), width=img.width, height=img.height, mode=img.mode)


def decode_rgb(data: bytes, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Decode to RGB: grayscale, palette, RGBA and CMYK converted; GIF and WebP give their first frame.

    ``draft_size``: for JPEG, let libjpeg decode at 1/2, 1/4 or 1/8 scale as long as both sides stay
    >= ``draft_size`` (the model's resize target), which skips most of the work for large photos.
    """
    img = open_image(data, max_pixels)
    try:
        if draft_size and img.format in JPEG_FORMATS:
            img.draft(None, (draft_size, draft_size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # palette-with-transparency notices
            img.seek(0)
            # The same conversion training uses (training.data.load_rgb), so pixels match.
            return img.convert("RGB")
    except Exception as e:  # truncated streams raise OSError, broken chunks SyntaxError/ValueError/zlib errors
        raise TruncatedImageError(f"image data is truncated or corrupt ({img.format}): {e}") from e
    finally:
        img.close()


def gpu_decodable(head: Header) -> bool:
    """JPEGs nvjpeg handles: baseline/progressive YCbCr or grayscale (CMYK goes to the CPU path)."""
    return head.format in JPEG_FORMATS and head.mode in ("RGB", "L")


def decode_jpegs_gpu(payloads: Sequence[bytes], device: Any) -> list[Any]:
    """Batch-decode JPEGs on the GPU (nvjpeg) to uint8 CHW RGB tensors; None where nvjpeg failed."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    if not payloads:
        return []
    tensors = [torch.frombuffer(bytearray(p), dtype=torch.uint8) for p in payloads]
    try:
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        log.warning("nvjpeg batch decode failed; decoding these %d images one by one", len(payloads), exc_info=True)
    out: list[Any] = []
    for t in tensors:
        try:
            out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out.append(None)  # the caller decodes it on the CPU, which also classifies the error
    return out
