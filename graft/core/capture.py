"""The capture store's contract: what the handler writes for a served input, and how the admin reads it.

``CAPTURE_DIR/<model>/<id>.cap`` is one file per captured input: a line naming the format, the record
(:class:`CaptureRecord` as one JSON line: what the model answered, and the image's type and length), then
the encoded image exactly as the client sent it. One file, written once and never renamed: creating a file
is the costliest thing capture does (kernel work, in the inference worker's time), so there is one per
capture. A reader knows a file is complete when its image is as long as the record says; a shorter one is
still being written (or its writer died: readers give up on it after :data:`INCOMPLETE_GRACE_S`).

Ids start with the capture time in nanoseconds, so their order is arrival order. On one machine the folder
is ``STATE_DIR/captures``; on Kubernetes a volume the inference pods write and the admin reads.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

CAPTURE_SUFFIX = ".cap"
MAGIC = b"graft-capture 1\n"
# A capture file shorter than its record says is being written; past this age, its writer is gone.
INCOMPLETE_GRACE_S = 60.0
# Requests carrying this header are never captured: the admin's smoke tests and shadow replays, whose inputs
# were captured already (or are holdout images) and must not come back as new traffic.
NO_CAPTURE_HEADER = "X-Graft-No-Capture"
MEDIA_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "bmp": "image/bmp",
               "gif": "image/gif", "bin": "application/octet-stream"}  # fmt: skip
_ID = re.compile(r"^[0-9]{20}-[0-9a-f]{8}$")


@dataclass(frozen=True)
class CaptureRecord:
    id: str
    model_name: str
    model_version: str
    captured_at: float  # Unix time, seconds
    request_id: str
    image_type: str  # the image's format, as a file extension (a key of MEDIA_TYPES)
    image_bytes: int  # the image's length: the rest of the file
    labels: list[str]  # the top-k labels the model answered, most probable first
    scores: list[float]
    margin: float  # top-1 minus top-2 probability: small = unsure
    entropy: float  # of the whole distribution, in nats: large = unsure
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def predicted(self) -> str:
        return self.labels[0]

    @property
    def file_name(self) -> str:
        return f"{self.id}{CAPTURE_SUFFIX}"

    def to_json(self) -> str:
        # Field by field, not asdict(): no deep copy (the handler writes one per captured request).
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)}, separators=(",", ":"))


@dataclass(frozen=True)
class Capture:
    record: CaptureRecord
    image: bytes


def encode(record: CaptureRecord, image: bytes) -> bytes:
    """The file's bytes (``json.dumps`` escapes newlines, so the record is one line)."""
    return b"".join((MAGIC, record.to_json().encode(), b"\n", image))


def decode(data: bytes) -> Capture | None:
    """The capture in a file's bytes; None when the file is incomplete or not a capture."""
    if not data.startswith(MAGIC):
        return None
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        return None
    try:
        record = CaptureRecord(**json.loads(data[len(MAGIC) : end]))
    except (ValueError, TypeError):
        return None
    image = data[end + 1 :]
    if not valid_id(record.id) or not record.labels or record.image_type not in MEDIA_TYPES:
        return None
    if len(image) != record.image_bytes:
        return None
    return Capture(record, image)


def read_capture(path: Path) -> Capture | None:
    """A capture file, or None when it is unreadable, incomplete or damaged (skipped, not fatal)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    capture = decode(data)
    if capture is None or Path(path).name != capture.record.file_name:
        return None
    return capture


def image_type(payload: bytes) -> str:
    """The format of an encoded image from its magic bytes (the handler accepted it already)."""
    if payload[:3] == b"\xff\xd8\xff":
        return "jpg"
    if payload[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if payload[:4] == b"RIFF" and payload[8:12] == b"WEBP":
        return "webp"
    if payload[:2] == b"BM":
        return "bmp"
    if payload[:3] == b"GIF":
        return "gif"
    return "bin"


def uncertainty(probs: Sequence[float]) -> tuple[float, float]:
    """(margin between the two most probable classes, entropy in nats) of a probability vector."""
    top = sorted(probs, reverse=True)
    margin = top[0] - (top[1] if len(top) > 1 else 0.0)
    entropy = -sum(p * math.log(p) for p in probs if p > 0)
    return round(margin, 6), round(entropy, 6)


def valid_id(capture_id: str) -> bool:
    return bool(_ID.match(capture_id))


def model_dir(root: Path, model_name: str) -> Path:
    return Path(root) / model_name


def capture_ids(root: Path, model_name: str, after: str = "") -> list[str]:
    """Ids of ``model_name``'s capture files in arrival order, those after ``after`` only."""
    try:
        with os.scandir(model_dir(root, model_name)) as entries:
            ids = [e.name[: -len(CAPTURE_SUFFIX)] for e in entries if e.name.endswith(CAPTURE_SUFFIX)]
    except OSError:
        return []
    return sorted(i for i in ids if i > after)


def capture_path(root: Path, model_name: str, capture_id: str) -> Path:
    return model_dir(root, model_name) / f"{capture_id}{CAPTURE_SUFFIX}"


def list_captures(root: Path, model_name: str, after: str = "") -> Iterator[Path]:
    """Capture files of ``model_name`` in arrival order, those with ids after ``after`` only."""
    for capture_id in capture_ids(root, model_name, after):
        yield capture_path(root, model_name, capture_id)
