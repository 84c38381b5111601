"""Emitting the handler's metrics (declared in :mod:`graft.core.metrics`) through TorchServe's metrics cache.

Emitting a metric never fails a request.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from graft.core.metrics import (
    BATCH_SIZE,
    CAPTURES,
    INFERENCE,
    PREDICTIONS,
    PREPROCESS,
    REJECTED,
    REQUESTS,
    SPECS,
    WORKER_STARTS,
    MetricSpec,
)

log = logging.getLogger(__name__)


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

    def captured(self, outcome: str, n: int = 1) -> None:
        self._emit(CAPTURES, n, [outcome])

    def answered(self, statuses: list[int]) -> None:
        """HTTP statuses of a batch's requests, counted by class (one update per class)."""
        for cls, n in Counter(f"{s // 100}xx" for s in statuses).items():
            self._emit(REQUESTS, n, [cls])

    def started(self) -> None:
        """The handler loaded its model (a worker started, or restarted after a crash)."""
        self._emit(WORKER_STARTS, 1, [self._backend])
