"""Synthetic images, encoded: the one factory the tests use (real photos come from ../shared)."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

from PIL import Image


def encode(img: Image.Image, fmt: str = "JPEG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def solid(color: tuple[int, int, int] = (200, 10, 10), fmt: str = "JPEG", size: tuple[int, int] = (16, 12),
          mode: str = "RGB") -> bytes:  # fmt: skip
    """One flat colour: decodes everywhere, tiny."""
    return encode(Image.new("RGB", size, color).convert(mode), fmt)


def jpeg(seed: int, size: tuple[int, int] = (24, 16)) -> bytes:
    """A flat-colour JPEG whose colour (and bytes) follow ``seed``."""
    return solid((seed % 256, (seed * 7) % 256, (seed * 13) % 256), "JPEG", size)


def png(seed: int, size: tuple[int, int] = (8, 8)) -> bytes:
    """Seeded noise as PNG: different bytes and different pixels for every seed."""
    w, h = size
    return encode(Image.frombytes("RGB", size, random.Random(seed).randbytes(w * h * 3)), "PNG")


def photo(seed: int, size: tuple[int, int] = (96, 96), fmt: str = "PNG", **kw: object) -> bytes:
    """Smooth, photo-like structure that follows ``seed``: a re-encoding (``fmt="JPEG"``) is a near-duplicate
    by perceptual hash, another seed is not."""
    small = Image.frombytes("RGB", (6, 6), random.Random(seed).randbytes(6 * 6 * 3))
    return encode(small.resize(size, Image.Resampling.BICUBIC), fmt, **kw)


def noise_png(w: int, h: int) -> bytes:
    """Random pixels: incompressible, so the file is as big as its pixel count says."""
    return encode(Image.frombytes("RGB", (w, h), os.urandom(w * h * 3)), "PNG")


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def image_folder(root: Path, per_split: dict[str, int], labels: tuple[str, ...] = ("ants", "bees"),
                 seed: int = 0) -> Path:  # fmt: skip
    """``root/<split>/<label>/*.png`` of seeded noise, ``per_split[split]`` images per label."""
    for s, (split, n) in enumerate(per_split.items()):
        for k, label in enumerate(labels):
            for i in range(n):
                write(root / split / label / f"{split}_{label}_{i}.png", png(seed + 10_000 * s + 1000 * k + i))
    return root


def tinted(seed: int, red: bool, size: tuple[int, int] = (16, 16)) -> bytes:
    """Seeded noise under a strong red (or blue) cast: distinct pictures whose colour says which label they are
    (``tests.support.fakes.tint_evaluate`` reads it)."""
    w, h = size
    noise = Image.frombytes("RGB", size, random.Random(seed).randbytes(w * h * 3))
    cast = Image.new("RGB", size, (230, 20, 20) if red else (20, 20, 230))
    return encode(Image.blend(noise, cast, 0.6), "PNG")
