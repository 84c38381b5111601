"""Drive the handler in-process, outside TorchServe, through a context built like TorchServe's.

For tests, benchmarks and ``bench/gpu_check.sh`` (GPU machines without Java). The context is
TorchServe's own ``ts.context.Context`` with its ``RequestProcessor`` per request and its metrics
cache loaded from our metrics config, when the ``ts`` package is importable; otherwise a small
stand-in with the same methods.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.core.metrics import metrics_config_yaml
from handlers.service import ImageClassifierService


class _Processor:
    """Stand-in for ``ts.context.RequestProcessor`` where torchserve is not installed."""

    def __init__(self, headers: Mapping[str, Any]) -> None:
        self.headers = dict(headers)
        self.status: tuple[int, str | None] = (200, None)
        self.response_headers: dict[str, str] = {}

    def get_request_properties(self) -> dict[str, Any]:
        return self.headers

    def report_status(self, code: int, reason_phrase: str | None = None) -> None:
        self.status = (code, reason_phrase)

    def get_response_status_code(self) -> int:
        return self.status[0]

    def add_response_property(self, key: str, value: str) -> None:
        self.response_headers[key] = value


class _Context:
    """Stand-in for ``ts.context.Context`` (the parts a handler uses)."""

    def __init__(self, model_name: str, model_dir: str, manifest: dict[str, Any], batch_size: int, gpu: int | None,
                 metrics: Any, model_yaml_config: dict[str, Any]) -> None:
        self.model_name = model_name
        self.manifest = manifest
        self.system_properties = {"model_dir": model_dir, "gpu_id": gpu, "batch_size": batch_size}
        self.metrics = metrics
        self.model_yaml_config = model_yaml_config
        self.request_processor: list[_Processor] = []

    def get_all_request_header(self, idx: int) -> dict[str, Any]:
        return self.request_processor[idx].get_request_properties()

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.request_processor[idx].report_status(code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.request_processor[idx].add_response_property("content-type", value)


def _metrics_cache(model_name: str) -> Any:
    try:
        from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    except ImportError:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(metrics_config_yaml())
    cache = MetricsCacheYamlImpl(config_file_path=f.name)
    cache.initialize_cache()
    cache.model_name = model_name
    Path(f.name).unlink()
    return cache


def make_context(model_dir: Path, gpu_id: int | None = None, batch_size: int = 8,
                 yaml_config: dict[str, Any] | None = None) -> Any:
    """A context for an unpacked archive directory (``MAR-INF/MANIFEST.json``, ``model-config.yaml``)."""
    import yaml

    manifest_path = model_dir / "MAR-INF" / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"model": {}}
    name = str(manifest["model"].get("modelName", model_dir.name))
    if yaml_config is None:
        config_file = manifest["model"].get("configFile", "model-config.yaml")
        path = model_dir / config_file
        yaml_config = yaml.safe_load(path.read_text()) if path.is_file() else {}
    metrics = _metrics_cache(name)
    try:
        from ts.context import Context
    except ImportError:
        return _Context(name, str(model_dir), manifest, batch_size, gpu_id, metrics, yaml_config or {})
    return Context(name, str(model_dir), manifest, batch_size, gpu_id, "local", True, metrics, yaml_config or {})


def unpack_mar(mar: Path, dest: Path) -> Path:
    with zipfile.ZipFile(mar) as z:
        z.extractall(dest)
    return dest


@dataclass
class LocalResponse:
    status: int
    body: Any  # parsed JSON
    content_type: str | None


class LocalHandler:
    """The handler on an unpacked archive, one ``predict`` call per TorchServe-like batch."""

    def __init__(self, model_dir: Path, gpu_id: int | None = None, batch_size: int = 8,
                 yaml_config: dict[str, Any] | None = None) -> None:
        self.context = make_context(Path(model_dir), gpu_id, batch_size, yaml_config)
        self.service = ImageClassifierService()
        self.service.initialize(self.context)

    def predict(self, items: Sequence[Mapping[str, Any]],
                headers: Sequence[Mapping[str, Any]] | None = None) -> list[LocalResponse]:
        """``items`` as TorchServe hands them to a handler, e.g. ``[{"body": jpeg_bytes}]``."""
        hdrs = list(headers) if headers is not None else [{} for _ in items]
        processors = _processors(hdrs)
        self.context.request_processor = processors
        self.context.request_ids = {i: f"local-{i}" for i in range(len(items))}
        bodies = self.service.handle([dict(x) for x in items], self.context)
        return [_response(p, b) for p, b in zip(processors, bodies, strict=True)]


def _processors(headers: Sequence[Mapping[str, Any]]) -> list[Any]:
    try:
        from ts.context import RequestProcessor
    except ImportError:
        return [_Processor(h) for h in headers]
    return [RequestProcessor(dict(h)) for h in headers]


def _response(processor: Any, body: Any) -> LocalResponse:
    if hasattr(processor, "get_response_headers"):
        headers = processor.get_response_headers()
    else:
        headers = processor.response_headers
    return LocalResponse(processor.get_response_status_code(), json.loads(body), headers.get("content-type"))
