"""One archive version, loaded once: graft's handler driven outside TorchServe, answering per item.

The context is :func:`graft.inprocess.make_context`'s (TorchServe's own ``Context`` class), with the
metrics pointed at Prometheus (:mod:`graft.kserve.metrics`) instead of TorchServe's log-line cache.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.core.errors import ArtifactError
from graft.inprocess import make_context
from graft.kserve.metrics import PrometheusMetricsCache
from handlers.service import ImageClassifierService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """The handler's answer to one item: its HTTP status and parsed JSON body."""

    status: int
    body: Any


class _Processor:
    """What TorchServe's ``Context`` asks of a request processor (headers in, status and headers out)."""

    def __init__(self, headers: Mapping[str, Any]) -> None:
        self.headers = dict(headers)
        self.status = 200
        self.response_headers: dict[str, str] = {}

    def get_request_properties(self) -> dict[str, Any]:
        return self.headers

    def report_status(self, code: int, reason_phrase: str | None = None) -> None:
        self.status = int(code)

    def get_response_status_code(self) -> int:
        return self.status

    def add_response_property(self, key: str, value: str) -> None:
        self.response_headers[key] = value

    def get_response_headers(self) -> dict[str, str]:
        return self.response_headers


def unpack(archive: Path, root: Path) -> Path:
    """An unpacked archive folder: ``archive`` itself when it is one, else the ``.mar`` unpacked under ``root``."""
    archive = Path(archive)
    if archive.is_dir():
        return archive
    try:
        with zipfile.ZipFile(archive) as z:
            manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))["model"]
            dest = root / f"{manifest['modelName']}-{manifest.get('modelVersion', '1.0')}"
            if not (dest / "MAR-INF" / "MANIFEST.json").is_file():
                dest.mkdir(parents=True, exist_ok=True)
                for member in z.namelist():  # extract() refuses absolute paths and '..' parts
                    z.extract(member, dest)
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as e:
        raise ArtifactError(f"{archive} is not a readable model archive ({e}): export it again with graft export") \
            from e  # fmt: skip
    return dest


class ArchiveEngine:
    """The handler on one unpacked archive; ``predict`` takes items as TorchServe hands them to a handler."""

    def __init__(self, model_dir: Path, gpu_id: int | None = None) -> None:
        self.context = make_context(Path(model_dir), gpu_id)
        self.context.metrics = PrometheusMetricsCache()
        cfg = self.context.model_yaml_config or {}
        self.max_batch = max(1, int(cfg.get("batchSize") or 1))
        self.max_delay_s = max(0, int(cfg.get("maxBatchDelay") or 0)) / 1000.0
        self.context.system_properties["batch_size"] = self.max_batch
        self.service = ImageClassifierService()
        self.service.initialize(self.context)
        self.name = self.service.model_name
        self.version = self.service.model_version
        self.labels = list(self.service.card.labels)
        self.topk = self.service.settings.topk
        self.max_instances = self.service.settings.max_instances
        self.max_body_bytes = self.service.settings.max_body_bytes

    def predict(self, items: Sequence[Mapping[str, Any]], headers: Sequence[Mapping[str, Any]]) -> list[Answer]:
        processors = [_Processor(h) for h in headers]
        self.context.request_processor = processors
        self.context.request_ids = {i: str(h.get("x-request-id", "")) for i, h in enumerate(headers)}
        bodies = self.service.handle([dict(x) for x in items], self.context)
        return [Answer(p.status, json.loads(b)) for p, b in zip(processors, bodies, strict=True)]
