"""The handler's custom metrics, declared once: the metrics config the launcher passes to TorchServe is
built from :data:`SPECS`, and the handler emits exactly these names and dimensions.

In Prometheus mode the frontend only exports backend metrics that the metrics config declares, so a
metric added here without the config would be silently dropped; :func:`metrics_config_yaml` keeps
the two in step. Emitting a metric never fails a request.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODEL_DIMS = ["ModelName", "ModelVersion"]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # counter | gauge | histogram (TorchServe's MetricTypes values)
    unit: str
    dimensions: tuple[str, ...]


PREPROCESS = MetricSpec("graft_preprocess_seconds", "histogram", "seconds", (*MODEL_DIMS,))
INFERENCE = MetricSpec("graft_inference_seconds", "histogram", "seconds", (*MODEL_DIMS, "Backend"))
BATCH_SIZE = MetricSpec("graft_batch_size", "histogram", "images", (*MODEL_DIMS,))
PREDICTIONS = MetricSpec("graft_predictions_total", "counter", "count", (*MODEL_DIMS, "Label"))
REJECTED = MetricSpec("graft_rejected_inputs_total", "counter", "count", (*MODEL_DIMS, "Reason"))
SPECS = (PREPROCESS, INFERENCE, BATCH_SIZE, PREDICTIONS, REJECTED)


def metrics_config(base: dict[str, Any] | None = None) -> dict[str, Any]:
    """TorchServe's default metrics config (``ts/configs/metrics.yaml``) plus our model metrics."""
    import yaml

    if base is None:
        import ts

        base = yaml.safe_load((Path(ts.__file__).parent / "configs" / "metrics.yaml").read_text())
    doc = dict(base)
    model = {k: list(v or []) for k, v in (doc.get("model_metrics") or {}).items()}
    for spec in SPECS:
        entries = model.setdefault(spec.kind, [])
        if all(e.get("name") != spec.name for e in entries):
            entries.append({"name": spec.name, "unit": spec.unit, "dimensions": list(spec.dimensions)})
    doc["model_metrics"] = model
    return doc


def metrics_config_yaml(base: dict[str, Any] | None = None) -> str:
    import yaml

    text: str = yaml.safe_dump(metrics_config(base), sort_keys=False)
    return text


class HandlerMetrics:
    """Emits through ``context.metrics`` (TorchServe's metrics cache); a no-op without one."""

    def __init__(self, cache: Any, model_name: str, model_version: str, backend: str) -> None:
        self._cache = cache
        self._dims = [model_name, model_version]
        self._backend = backend
        self._metrics: dict[str, Any] = {}
        if cache is not None:
            for spec in SPECS:
                self._metrics[spec.name] = self._lookup(spec)

    def _lookup(self, spec: MetricSpec) -> Any:
        from ts.metrics.metric_type_enum import MetricTypes

        kind = MetricTypes(spec.kind)
        try:
            return self._cache.get_metric(spec.name, kind)
        except Exception:
            # Started without our metrics config (plain `torchserve`): declare it in the worker so the
            # log-mode metrics still appear; Prometheus mode needs the config to export it.
            log.info("metric %s not in the metrics config; declaring it in the worker", spec.name)
            return self._cache.add_metric_to_cache(spec.name, spec.unit, list(spec.dimensions), kind)

    def _emit(self, spec: MetricSpec, value: float, extra: list[str]) -> None:
        metric = self._metrics.get(spec.name)
        if metric is None:
            return
        try:
            metric.add_or_update(value, [*self._dims, *extra])
        except Exception:  # a metrics hiccup must never fail a prediction
            log.debug("could not emit %s", spec.name, exc_info=True)

    def preprocess(self, seconds: float) -> None:
        self._emit(PREPROCESS, seconds, [])

    def inference(self, seconds: float, images: int) -> None:
        self._emit(INFERENCE, seconds, [self._backend])
        self._emit(BATCH_SIZE, images, [])

    def predicted(self, labels: list[str]) -> None:
        """Top-1 labels of a batch: one update per distinct label (each update is a log line to parse)."""
        for label, n in Counter(labels).items():
            self._emit(PREDICTIONS, n, [label])

    def rejected(self, reason: str) -> None:
        self._emit(REJECTED, 1, [reason])
