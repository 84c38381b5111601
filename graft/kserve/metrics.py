"""The handler's metrics (:data:`graft.core.metrics.SPECS`) as Prometheus collectors on KServe's ``/metrics``.

:class:`handlers.metrics.HandlerMetrics` talks to TorchServe's metrics cache (``get_metric(name, kind)``
then ``add_or_update(value, dimensions)``); this cache answers the same calls with ``prometheus_client``
collectors in the default registry, which KServe's REST server exports. Metric and label names match
what TorchServe's Prometheus mode exports (``ModelName``, ``ModelVersion``...), so one dashboard reads both.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, ClassVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from graft.core.metrics import SPECS, MetricSpec

# Images per batch and seconds per batch: buckets that resolve graft's batch sizes and CPU latencies.
_BUCKETS = {
    "seconds": (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    "images": (1, 2, 4, 8, 16, 32, 64, 128),
}


class _Metric:
    def __init__(self, collector: Any, kind: str) -> None:
        self._collector = collector
        self._kind = kind

    def add_or_update(self, value: float, dimension_values: Sequence[str]) -> None:
        child = self._collector.labels(*[str(v) for v in dimension_values])
        if self._kind == "counter":
            child.inc(value)
        elif self._kind == "gauge":
            child.set(value)
        else:
            child.observe(value)


class PrometheusMetricsCache:
    """Stands in for TorchServe's metrics cache; one set of collectors per registry (per process)."""

    # Keyed by the registry itself, weakly: an id() outlives its registry and a new one may reuse it, which
    # handed a fresh registry the collectors of a dead one (and left it empty).
    _shared: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, dict[str, _Metric]]] = weakref.WeakKeyDictionary()

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        known = self._shared.setdefault(registry, {})
        if not known:
            for spec in SPECS:
                known[spec.name] = _Metric(_collector(spec, registry), spec.kind)
        self._metrics = known

    def get_metric(self, name: str, kind: Any = None) -> _Metric:
        return self._metrics[name]  # KeyError: HandlerMetrics then declares it (never for our SPECS)

    def add_metric_to_cache(self, name: str, unit: str, dimensions: list[str], kind: Any) -> _Metric:
        return self._metrics[name]


def _collector(spec: MetricSpec, registry: CollectorRegistry) -> Any:
    labels = list(spec.dimensions)
    doc = f"graft handler metric {spec.name} ({spec.unit})"
    if spec.kind == "counter":
        # prometheus_client appends _total to counters itself: declare the name without it.
        return Counter(spec.name.removesuffix("_total"), doc, labels, registry=registry)
    if spec.kind == "gauge":
        return Gauge(spec.name, doc, labels, registry=registry)
    buckets = _BUCKETS.get(spec.unit, Histogram.DEFAULT_BUCKETS)
    return Histogram(spec.name, doc, labels, registry=registry, buckets=buckets)
