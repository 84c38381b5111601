"""The capture store's contract: what the handler writes for a served input, and how the admin reads it.

Each inference worker appends its captures to a segment file, ``CAPTURE_DIR/<model>/<first id>.seg``, and
starts a new segment past :func:`segment_bytes`. A capture in a segment is a line naming the format, the
record (:class:`CaptureRecord` as one JSON line: what the model answered, and the image's type and length),
then the encoded image exactly as the client sent it; the next capture follows. Appending to an open file
costs the worker almost nothing, where creating a file per capture cost up to 0.7 ms of kernel time each on
our test machine. A reader keeps the offset it has read up to in each segment; a capture cut short at the
end is still being written (or its writer died: readers give up on it after :data:`INCOMPLETE_GRACE_S`).

Ids start with the capture time in nanoseconds, so their order is arrival order, and segment names sort
oldest first (the disk budget deletes whole segments, oldest first). On one machine the folder is
``STATE_DIR/captures``; on Kubernetes a volume the inference pods write and the admin reads.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

SEGMENT_SUFFIX = ".seg"
MAGIC = b"graft-capture 1\n"
# A segment ending in a partial capture is being written; past this age (since its last write), its writer is gone.
INCOMPLETE_GRACE_S = 60.0
# Requests carrying this header are never captured: the admin's smoke tests and shadow replays, whose inputs
# were captured already (or are holdout images) and must not come back as new traffic. Its value must be the key
# in CAPTURE_DIR/NO_CAPTURE_KEY_FILE, which the admin writes and the workers read and no inference client can:
# otherwise any client could keep its traffic out of drift and review.
NO_CAPTURE_HEADER = "X-Graft-No-Capture"
NO_CAPTURE_KEY_FILE = "no-capture.key"
MEDIA_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "bmp": "image/bmp",
               "gif": "image/gif", "bin": "application/octet-stream"}  # fmt: skip
_ID = re.compile(r"^[0-9]{20}-[0-9a-f]{8}$")
_MAX_RECORD_BYTES = 64 * 1024  # a record line longer than this is not one


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
    def media_type(self) -> str:
        return MEDIA_TYPES[self.image_type]  # a record with another type does not decode

    def to_json(self) -> str:
        # Field by field, not asdict(): no deep copy (the handler writes one per captured request).
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)}, separators=(",", ":"))


@dataclass(frozen=True)
class Capture:
    record: CaptureRecord
    image: bytes


def encode(record: CaptureRecord, image: bytes) -> bytes:
    """A capture's bytes in a segment (``json.dumps`` escapes newlines, so the record is one line)."""
    return b"".join((MAGIC, record.to_json().encode(), b"\n", image))


class DamagedSegmentError(ValueError):
    """Bytes in a segment that are not a capture: the rest of the segment cannot be read."""


def decode_at(data: bytes, pos: int = 0) -> tuple[Capture, int] | None:
    """The capture starting at ``pos`` and the offset after it; None when ``data`` ends before it does.

    Raises :class:`DamagedSegmentError` when the bytes there are not a capture.
    """
    head = data[pos : pos + len(MAGIC)]
    if head != MAGIC[: len(head)]:
        raise DamagedSegmentError(f"no capture starts at offset {pos}")
    end = data.find(b"\n", pos + len(MAGIC))
    if end < 0:
        if len(data) - pos > _MAX_RECORD_BYTES:
            raise DamagedSegmentError(f"the record at offset {pos} has no end")
        return None
    try:
        record = CaptureRecord(**json.loads(data[pos + len(MAGIC) : end]))
    except (ValueError, TypeError) as e:
        raise DamagedSegmentError(f"the record at offset {pos} is not valid: {e}") from e
    if not valid_id(record.id) or not record.labels or record.image_type not in MEDIA_TYPES or record.image_bytes < 0:
        raise DamagedSegmentError(f"the record at offset {pos} is not valid")
    stop = end + 1 + record.image_bytes
    if len(data) < stop:
        return None
    return Capture(record, data[end + 1 : stop]), stop


def decode_segment(data: bytes, start: int = 0) -> tuple[list[tuple[int, int, Capture]], int]:
    """Every whole capture from ``start``: ``(offset, length, capture)`` each, and the offset read up to
    (the start of a capture still being written, or the end). Damage raises :class:`DamagedSegmentError`."""
    out, pos = [], start
    while pos < len(data):
        found = decode_at(data, pos)
        if found is None:
            break
        capture, stop = found
        out.append((pos, stop - pos, capture))
        pos = stop
    return out, pos


def read_at(path: Path, offset: int, length: int) -> Capture | None:
    """The capture at ``offset`` in a segment (the index says where); None when it is gone or damaged."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        found = decode_at(data)
    except (OSError, DamagedSegmentError):
        return None
    return None if found is None or found[1] != length else found[0]


def erase_image(path: Path, offset: int, length: int, capture_id: str) -> bool:
    """Overwrite the image of the capture at ``offset`` with zeros; False when it is not there (pruned, damaged,
    or another capture). The record before it stays, so the segment still reads end to end, and the worker only
    ever appends, so writing inside the file is safe while it writes."""
    capture = read_at(path, offset, length)
    if capture is None or capture.record.id != capture_id:
        return False
    try:
        with open(path, "r+b") as f:
            f.seek(offset + length - len(capture.image))
            f.write(bytes(len(capture.image)))
    except OSError:
        return False  # pruned meanwhile
    return True


def no_capture_key(root: Path, create: bool = False) -> str | None:
    """The key that exempts a request from capture (``CAPTURE_DIR/no-capture.key``, mode 0600): None when there is
    none, unless ``create`` (the admin) makes one. The workers only read it."""
    path = Path(root) / NO_CAPTURE_KEY_FILE
    if create and not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
        except FileExistsError:
            pass  # another admin process made it first: use theirs
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def segment_bytes(budget_bytes: int) -> int:
    """How large a worker lets its segment grow: the budget is kept by deleting whole segments."""
    return max(64 * 1024, min(8 * 2**20, budget_bytes // 16))


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


def segment_names(root: Path, model_name: str) -> list[str]:
    """``model_name``'s segment files, oldest first."""
    try:
        with os.scandir(model_dir(root, model_name)) as entries:
            return sorted(e.name for e in entries if e.name.endswith(SEGMENT_SUFFIX))
    except OSError:
        return []


def read_captures(root: Path, model_name: str) -> list[Capture]:
    """Every whole capture of ``model_name``, oldest first (tools and tests; the admin reads incrementally)."""
    out: list[Capture] = []
    for name in segment_names(root, model_name):
        try:
            data = (model_dir(root, model_name) / name).read_bytes()
            out += [capture for _, _, capture in decode_segment(data)[0]]
        except (OSError, DamagedSegmentError):
            continue
    return out
