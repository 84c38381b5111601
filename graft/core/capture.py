"""The capture store's contract: what the handler writes for a served input, and how the admin reads it.

``CAPTURE_DIR/<model>/<id>.<ext>`` holds the encoded image as the client sent it and
``CAPTURE_DIR/<model>/<id>.json`` what the model answered (:class:`CaptureRecord`); the JSON file is
written last (atomically), so its presence means the capture is complete. Ids start with the capture time
in nanoseconds, so their order is arrival order. On one machine the folder is ``STATE_DIR/captures``; on
Kubernetes a volume the inference pods write and the admin reads.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

RECORD_SUFFIX = ".json"
# Requests carrying this header are never captured: the admin's smoke tests and shadow replays, whose inputs
# were captured already (or are holdout images) and must not come back as new traffic.
NO_CAPTURE_HEADER = "X-Graft-No-Capture"
_ID = re.compile(r"^[0-9]{20}-[0-9a-f]{8}$")


@dataclass(frozen=True)
class CaptureRecord:
    id: str
    model_name: str
    model_version: str
    captured_at: float  # Unix time, seconds
    request_id: str
    image_file: str  # the image's file name, beside the record
    labels: list[str]  # the top-k labels the model answered, most probable first
    scores: list[float]
    margin: float  # top-1 minus top-2 probability: small = unsure
    entropy: float  # of the whole distribution, in nats: large = unsure
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def predicted(self) -> str:
        return self.labels[0]

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


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


def read_record(path: Path) -> CaptureRecord | None:
    """A record file, or None when it is unreadable (a half-written or damaged file is skipped, not fatal)."""
    try:
        raw = json.loads(Path(path).read_text())
        record = CaptureRecord(**raw)
    except (OSError, ValueError, TypeError):
        return None
    if not valid_id(record.id) or "/" in record.image_file or not record.labels:
        return None
    return record


def list_records(root: Path, model_name: str, after: str = "") -> Iterator[Path]:
    """Record files of ``model_name`` in arrival order, those with ids after ``after`` only."""
    folder = model_dir(root, model_name)
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.name.endswith(RECORD_SUFFIX))
    except OSError:
        return
    for name in names:
        if name[: -len(RECORD_SUFFIX)] > after:
            yield folder / name
