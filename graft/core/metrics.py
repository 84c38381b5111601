"""The handler's custom metrics, declared once: the metrics config the launcher passes to TorchServe is
built from :data:`SPECS`, and the handler (handlers/metrics.py) emits exactly these names and dimensions.

In Prometheus mode the frontend only exports backend metrics that the metrics config declares, so a
metric added here without the config would be silently dropped; :func:`metrics_config_yaml` keeps
the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
# Served inputs kept for the review queue, and the ones dropped (a full queue, a full or broken disk).
CAPTURES = MetricSpec("graft_captures_total", "counter", "count", (*MODEL_DIMS, "Outcome"))
# Requests the handler answered, by status class (2xx, 4xx, 5xx): the same counter on either runtime, where
# TorchServe's Requests2XX... and KServe's request_* metrics differ (deploy/monitoring/ reads this one).
REQUESTS = MetricSpec("graft_requests_total", "counter", "count", (*MODEL_DIMS, "Status"))
# Handler loads: one per TorchServe worker started or restarted, one per KServe runtime process and version.
WORKER_STARTS = MetricSpec("graft_worker_starts_total", "counter", "count", (*MODEL_DIMS, "Backend"))
SPECS = (PREPROCESS, INFERENCE, BATCH_SIZE, PREDICTIONS, REJECTED, CAPTURES, REQUESTS, WORKER_STARTS)


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
