"""Labelled samples: validation, content-addressed files written atomically, a deterministic split.

A sample's id is the sha256 of its bytes, its file lives at ``samples/ab/<sha256>.<ext>``, and its
split (train or holdout) is a function of that hash alone: the same image always lands in the same
split, whoever posts it and however often, so the holdout never leaks into training.
"""

from __future__ import annotations

import hashlib
import io
import os
import unicodedata
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from admin.db import Database
from graft.artifact import utc_now
from graft.errors import (
    ConflictError,
    EmptyBodyError,
    InvalidSampleError,
    NotAnImageError,
    TooManyPixelsError,
    TruncatedImageError,
)

MAX_LABEL_LENGTH = 64
# PIL format name -> file extension. Anything else is refused: these are what training decodes.
FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif"}
_FORBIDDEN_IN_LABEL = set('/\\:*?"<>|')


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class StoredSample:
    id: str
    label: str
    split: str
    duplicate: bool
    seq: int


def validate_label(raw: str | None) -> str:
    """A class name safe as a file name, a metric label and a JSON key; the reason when it is not."""
    if raw is None or raw == "":
        raise InvalidSampleError("missing label: send the class name in the 'label' form field")
    label = unicodedata.normalize("NFC", raw)
    if not label.strip():
        raise InvalidSampleError("empty label: the 'label' field is only whitespace")
    if label != label.strip():
        raise InvalidSampleError(f"label {label!r} has leading or trailing whitespace")
    if len(label) > MAX_LABEL_LENGTH:
        raise InvalidSampleError(f"label is {len(label)} characters long; at most {MAX_LABEL_LENGTH} are allowed")
    if any(unicodedata.category(ch).startswith("C") for ch in label):
        raise InvalidSampleError(f"label {label!r} contains control or invisible characters")
    if _FORBIDDEN_IN_LABEL & set(label) or label in (".", ".."):
        raise InvalidSampleError(f"label {label!r} contains a path separator or a character unsafe in file names")
    return label


def inspect_image(data: bytes, max_pixels: int) -> ImageInfo:
    """Decode the bytes fully (a header check lets truncated files through); raise a typed 4xx error."""
    if not data:
        raise EmptyBodyError("empty file: the upload has no bytes")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below is the guard; PIL's global one stays untouched.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(FORMATS)) as im:
                fmt, (width, height) = str(im.format), im.size
                if width * height > max_pixels:
                    raise TooManyPixelsError(f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")
                if fmt == "JPEG":
                    im.draft("RGB", (min(width, 512), min(height, 512)))  # decode at reduced size: cheaper
                im.load()
    except UnidentifiedImageError as e:
        raise NotAnImageError(f"not an image in a supported format ({', '.join(FORMATS)})") from e
    except Image.DecompressionBombError as e:
        raise TooManyPixelsError(f"image refused as a decompression bomb: {e}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise TruncatedImageError(f"the image cannot be decoded (truncated or corrupt): {e}") from e
    return ImageInfo(fmt, width, height)


def split_for(sha256_hex: str, holdout_fraction: float) -> str:
    """``holdout`` for a fixed fraction of hashes, ``train`` for the rest; a pure function of the bytes."""
    bucket = int(sha256_hex[:8], 16) / 0x1_0000_0000
    return "holdout" if bucket < holdout_fraction else "train"


def write_atomic(path: Path, data: bytes) -> None:
    """Write-then-rename in the same folder, fsynced: a reader never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # unique per writer: uploads race
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


class SampleStore:
    """Samples on disk (content-addressed) and in SQLite (label, split, arrival order)."""

    def __init__(self, db: Database, root: Path, holdout_fraction: float, max_image_pixels: int):
        self.db = db
        self.root = Path(root)
        self.holdout_fraction = holdout_fraction
        self.max_image_pixels = max_image_pixels

    def add(self, data: bytes, raw_label: str | None) -> StoredSample:
        """Validate and store one sample; a byte-identical duplicate is recognised, not stored twice."""
        label = validate_label(raw_label)
        info = inspect_image(data, self.max_image_pixels)
        return self.add_validated(data, label, info)

    def add_validated(self, data: bytes, label: str, info: ImageInfo) -> StoredSample:
        sha = hashlib.sha256(data).hexdigest()
        existing = self._existing(sha, label)
        if existing is not None:
            return existing
        rel = Path("samples") / sha[:2] / f"{sha}.{FORMATS[info.format]}"
        # File first, row second: a crash in between leaves an orphan file, never a row without its file.
        write_atomic(self.root / rel, data)
        split = split_for(sha, self.holdout_fraction)
        with self.db.tx() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO samples (sha256, label, split, path, size, format, width, height, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sha, label, split, str(rel), len(data), info.format, info.width, info.height, utc_now()),
            )
            inserted, seq = cur.rowcount == 1, cur.lastrowid
        if not inserted:  # the same bytes raced in from another request
            existing = self._existing(sha, label)
            assert existing is not None
            return existing
        return StoredSample(sha, label, split, False, int(seq or 0))

    def _existing(self, sha: str, label: str) -> StoredSample | None:
        row = self.db.one("SELECT seq, label, split FROM samples WHERE sha256 = ?", (sha,))
        if row is None:
            return None
        if row["label"] != label:
            raise ConflictError(
                f"this image is already stored as sample {sha} with label {row['label']!r}, not {label!r}"
            )
        return StoredSample(sha, row["label"], row["split"], True, int(row["seq"]))

    def get(self, sample_id: str) -> dict[str, Any] | None:
        row = self.db.one("SELECT * FROM samples WHERE sha256 = ?", (sample_id,))
        return None if row is None else _public(row)

    def count_since(self, seq: int) -> int:
        row = self.db.one("SELECT COUNT(*) AS n FROM samples WHERE seq > ?", (seq,))
        return int(row["n"]) if row else 0

    def max_seq(self) -> int:
        row = self.db.one("SELECT COALESCE(MAX(seq), 0) AS m FROM samples")
        return int(row["m"]) if row else 0

    def counts(self) -> dict[str, dict[str, int]]:
        """``{label: {"train": n, "holdout": m}}`` for every label seen."""
        out: dict[str, dict[str, int]] = {}
        for row in self.db.all("SELECT label, split, COUNT(*) AS n FROM samples GROUP BY label, split"):
            out.setdefault(row["label"], {"train": 0, "holdout": 0})[row["split"]] = int(row["n"])
        return out

    def snapshot(self, up_to_seq: int) -> list[tuple[Path, str, str, str]]:
        """``(absolute path, label, split, sha256)`` of every sample up to ``up_to_seq``, in arrival order."""
        rows = self.db.all("SELECT sha256, label, split, path FROM samples WHERE seq <= ? ORDER BY seq", (up_to_seq,))
        return [((self.root / r["path"]).resolve(), r["label"], r["split"], r["sha256"]) for r in rows]

    def missing_files(self) -> list[str]:
        """Ids of samples whose file is gone: should always be empty (the crash test checks it)."""
        rows = self.db.all("SELECT sha256, path FROM samples")
        return [r["sha256"] for r in rows if not (self.root / r["path"]).is_file()]


def _public(row: Any) -> dict[str, Any]:
    return {
        "id": row["sha256"],
        "label": row["label"],
        "split": row["split"],
        "size": row["size"],
        "format": row["format"],
        "width": row["width"],
        "height": row["height"],
        "received_at": row["received_at"],
    }
