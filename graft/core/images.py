"""The one image-acceptance policy: which formats, how many pixels, what shape, and one decode function.

Uploads to the admin, requests to the handler and files read by training all pass through here, so
an image one part accepts the others accept too. Images come from untrusted clients: the pixel limit
is checked on the header, before any pixel is decoded, and without touching ``PIL.Image.MAX_IMAGE_PIXELS``
(the process-wide guard stays on). Every refusal is a typed :class:`graft.core.errors.BadInputError`.

Transparency is composited over a background (the model card's ``preprocessing.background``, white by
default), never dropped: training, the handler and the export's checks decode alike (:func:`flatten`).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from graft.core.errors import (
    BadInputError,
    EmptyBodyError,
    NotAnImageError,
    TooManyPixelsError,
    TruncatedImageError,
    UnsupportedFormatError,
)
from graft.core.preprocessing import WHITE

# PIL plugin ids tried on open. Multi-picture JPEGs (MPO, written by many cameras) open through the JPEG
# plugin and report format "MPO": they are JPEGs whose first picture is the photo.
PLUGINS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
ACCEPTED = "JPEG, PNG, WebP, BMP, GIF"
JPEG_FORMATS = ("JPEG", "MPO")
# Format PIL reports -> the file extension a stored copy gets.
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif"}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
# Below PIL's own 89 Mpx warning: an explicit decompression-bomb guard for every part of graft.
MAX_IMAGE_PIXELS = 50_000_000
# Resize scales the short side up to the model's size; a very thin image would become huge. 50:1 keeps the
# resized area under 50 x resize^2 pixels while letting panoramas and tall screenshots through.
MAX_ASPECT_RATIO = 50


@dataclass(frozen=True)
class Header:
    format: str
    width: int
    height: int
    mode: str

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


def _identify_other(data: bytes) -> str | None:
    """The format name when PIL recognises bytes we do not accept, else None."""
    try:
        # Header parsing only (no pixel decoding) to tell "unsupported format" from "not an image".
        with Image.open(io.BytesIO(data)) as img:
            return str(img.format)
    except Exception:  # any parser failure on untrusted bytes just means "not recognised"
        return None


def check_dimensions(width: int, height: int, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
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


def open_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Parse the header of an accepted format and check the limits; pixels are not decoded yet."""
    if not data:
        raise EmptyBodyError("empty image: there are no bytes")
    try:
        with warnings.catch_warnings():
            # Our own limit is the policy; PIL's warning would only duplicate it in the log.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=PLUGINS)
    except Image.DecompressionBombError as e:
        raise TooManyPixelsError(f"image too large: {e}") from e
    except UnidentifiedImageError as e:
        other = _identify_other(data)
        if other is not None:
            raise UnsupportedFormatError(f"unsupported image format {other}; send one of {ACCEPTED}") from e
        raise NotAnImageError(f"not an image ({len(data)} bytes, starting {data[:8]!r}); send one of {ACCEPTED}") from e
    except Exception as e:  # a malformed header can raise anything from a format plugin
        raise TruncatedImageError(f"image header is truncated or corrupt: {e}") from e
    if img.format not in EXTENSIONS:  # a plugin may report a sub-format we have not vetted
        img.close()
        raise UnsupportedFormatError(f"unsupported image format {img.format}; send one of {ACCEPTED}")
    try:
        check_dimensions(img.width, img.height, max_pixels)
    except BadInputError:
        img.close()
        raise
    return img


def header(img: Image.Image) -> Header:
    return Header(format=str(img.format), width=img.width, height=img.height, mode=img.mode)


# Modes with an alpha channel; palette, grey and RGB images may instead name one transparent colour (tRNS, GIF).
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_KEYED_MODES = frozenset({"P", "L", "RGB", "1"})


def decode_frame(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, draft_size: int | None = None
                 ) -> tuple[Header, Image.Image]:  # fmt: skip
    """The header as sent and the first frame fully decoded in its own mode (alpha kept); the caller closes it.

    ``draft_size``: for JPEG, let libjpeg decode at 1/2, 1/4 or 1/8 scale as long as both sides stay
    >= ``draft_size``, which skips most of the work for large photos (truncation is still detected).
    """
    img = open_image(data, max_pixels)
    head = header(img)
    try:
        if draft_size and img.format in JPEG_FORMATS:
            img.draft(None, (draft_size, draft_size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # palette-with-transparency notices
            img.seek(0)
            img.load()
    except Exception as e:  # truncated streams raise OSError, broken chunks SyntaxError/ValueError/zlib errors
        img.close()
        raise TruncatedImageError(f"image data is truncated or corrupt ({img.format}): {e}") from e
    return head, img


def _with_alpha(img: Image.Image) -> Image.Image | None:
    """The image as RGBA when it carries transparency (an alpha channel or a transparent colour), else None."""
    if img.mode in _ALPHA_MODES or (img.mode in _KEYED_MODES and "transparency" in img.info):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return img.convert("RGBA")
    return None


def has_transparency(img: Image.Image) -> bool:
    """Some pixel is not fully opaque (an RGBA screenshot whose alpha is 255 everywhere has none)."""
    rgba = _with_alpha(img)
    if rgba is None:
        return False
    low, _ = rgba.getchannel("A").getextrema()  # one band: (min, max)
    return int(low) < 255  # type: ignore[arg-type]


def flatten(img: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """RGB, transparency composited over ``background``: the one decode policy of training and serving.

    Converting RGBA to RGB drops alpha and keeps whatever colour transparent pixels happen to store (often
    black): black-on-transparent icons would all become solid black.
    """
    rgba = _with_alpha(img)
    if rgba is None:
        return img.convert("RGB")
    base = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def decode_rgb(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, draft_size: int | None = None,
               background: tuple[int, int, int] = WHITE) -> Image.Image:  # fmt: skip
    """Decode to RGB: grayscale, palette and CMYK converted, transparency composited over ``background``
    (a model's is ``card.preprocessing.background``); GIF and WebP give their first frame.

    ``draft_size``: see :func:`decode_frame` (the model's resize target keeps the short side above it).
    """
    _, img = decode_frame(data, max_pixels, draft_size)
    try:
        return flatten(img, background)
    except Exception as e:  # a mode PIL cannot convert is as unusable as a corrupt stream
        raise TruncatedImageError(f"image data is truncated or corrupt ({img.format}): {e}") from e
    finally:
        img.close()


def inspect(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Header:
    """Accept or refuse bytes as an image by decoding them (a header check lets truncated files through).

    Large JPEGs decode at reduced size (draft): cheaper, and truncation is still detected.
    """
    img = open_image(data, max_pixels)
    head = header(img)
    try:
        if img.format in JPEG_FORMATS:
            img.draft("RGB", (min(img.width, 512), min(img.height, 512)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            img.load()
    except Exception as e:
        raise TruncatedImageError(f"the image cannot be decoded (truncated or corrupt): {e}") from e
    finally:
        img.close()
    return head


def load_rgb(path: Path, max_pixels: int = MAX_IMAGE_PIXELS, background: tuple[int, int, int] = WHITE
             ) -> Image.Image:  # fmt: skip
    """A file decoded to RGB under the same policy (training and evaluation read images this way)."""
    return decode_rgb(Path(path).read_bytes(), max_pixels, background=background)


def is_readable_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> bool:
    """Cheap header check of a file (no full decode): refuses non-images, other formats and bombs."""
    try:
        open_image(Path(path).read_bytes(), max_pixels).close()
        return True
    except (BadInputError, OSError):
        return False


@dataclass(frozen=True)
class Fingerprint:
    """What an image *looks like*, whatever its bytes: the same pixels give the same ``pixels_sha``; a
    re-encoded, resized or slightly edited copy gives a ``phash`` within a few bits."""

    header: Header
    pixels_sha: str
    phash: int  # 64-bit difference hash of the 9x8 grayscale thumbnail
    thumb: bytes = b""  # 16x16 grayscale pixels: confirms what the coarse hash only suggests

    @property
    def phash_hex(self) -> str:
        return f"{self.phash:016x}"


def difference_hash(img: Image.Image) -> int:
    """dHash: brighter-than-right-neighbour bits of a 9x8 grayscale thumbnail (robust to re-encoding)."""
    small = img.convert("L").resize((9, 8), Image.Resampling.BILINEAR)
    px = small.load()
    bits = 0
    for y in range(8):
        for x in range(8):
            bits = (bits << 1) | int(px[x, y] > px[x + 1, y])  # type: ignore[index,operator]
    return bits


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


THUMB_SIDE = 16


def thumbnail(img: Image.Image) -> bytes:
    """The picture at 16x16 in grayscale (box-filtered): finer than the 64-bit hash, still tiny."""
    return img.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX).tobytes()


def thumb_similarity(a: bytes, b: bytes) -> float:
    """Pearson correlation of two thumbnails: 1 for the same picture whatever its brightness, contrast or
    encoding; lower for two different pictures, even similar ones (two sneakers on black, say)."""
    if len(a) != len(b) or not a:
        return 0.0
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    da, db = [x - ma for x in a], [y - mb for y in b]
    va, vb = sum(x * x for x in da), sum(y * y for y in db)
    if va < 1e-9 or vb < 1e-9:  # a flat picture: the same only if the other is flat at about the same level
        return 1.0 if va < 1e-9 and vb < 1e-9 and abs(ma - mb) < 8 else 0.0
    return float(sum(x * y for x, y in zip(da, db, strict=True)) / (va * vb) ** 0.5)


def fingerprint(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, thumb: bool = True) -> Fingerprint:
    """Accept or refuse bytes as an image (like :func:`inspect`) and say what they look like (``thumb``:
    with the thumbnail, which only the holdout check needs)."""
    fp, rgb = fingerprint_decoded(data, max_pixels, thumb)
    rgb.close()
    return fp


def fingerprint_decoded(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, thumb: bool = True
                        ) -> tuple[Fingerprint, Image.Image]:  # fmt: skip
    """:func:`fingerprint` and the RGB image it decoded, for a caller that needs the pixels too (one decode)."""
    import hashlib

    head = header(open_image(data, max_pixels))  # limits checked on the header, before any decoding
    # decode_rgb: full decode (truncation detected); JPEGs at most 1/8 down to 512 px, the same for the
    # same stream, so equal pixels hash equally whatever wraps them.
    rgb = decode_rgb(data, max_pixels, draft_size=512)
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()).hexdigest()
    return Fingerprint(head, digest, difference_hash(rgb), thumbnail(rgb) if thumb else b""), rgb
