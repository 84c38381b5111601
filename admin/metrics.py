"""Prometheus metrics of the control plane, on a registry of their own per app.

A per-app :class:`CollectorRegistry` (not prometheus-client's global one) lets a process build many
apps (tests do) without "duplicated timeseries" errors, and keeps TorchServe's metrics apart.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Training jobs take minutes to hours; the buckets follow that, not web-request latencies.
_JOB_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, float("inf"))


class AdminMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.samples_received = Counter(
            "graft_admin_samples_received",
            "Labelled samples accepted, new or duplicate",
            ["label", "split", "duplicate"],
            registry=r,
        )
        self.samples_rejected = Counter(
            "graft_admin_samples_rejected", "Uploads refused, by error type", ["reason"], registry=r
        )
        self.samples_stored = Gauge(
            "graft_admin_samples_stored", "Samples in the store", ["label", "split"], registry=r
        )
        self.jobs = Counter("graft_admin_jobs", "Finished retraining jobs by outcome", ["outcome"], registry=r)
        self.job_duration = Histogram(
            "graft_admin_job_duration_seconds",
            "Wall time of retraining jobs",
            ["outcome"],
            buckets=_JOB_BUCKETS,
            registry=r,
        )
        self.job_running = Gauge("graft_admin_job_running", "1 while a retraining job is queued or running", registry=r)
        self.serving_accuracy = Gauge(
            "graft_admin_serving_holdout_accuracy",
            "Holdout accuracy of the model in service, measured at its last evaluation",
            registry=r,
        )
        self.serving_version = Gauge(
            "graft_admin_serving_version", "Version of the model in service (the default)", registry=r
        )
        self.promotions = Counter("graft_admin_promotions", "Defaults changed, by action", ["action"], registry=r)
        self.rollout_failures = Counter(
            "graft_admin_rollout_failures", "Deploys or swaps that failed (the champion kept serving)", registry=r
        )
        # Production feedback: captured traffic, the review queue, drift against the champion's holdout.
        self.captures = Gauge("graft_admin_captures", "Indexed captures of served inputs, by status", ["status"],
                              registry=r)  # fmt: skip
        self.drift_psi = Gauge(
            "graft_admin_drift_psi",
            "Population stability index of the latest window's predicted classes against the champion's holdout "
            "(NaN below the minimum number of captures)",
            registry=r,
        )
        self.drift_window_captures = Gauge(
            "graft_admin_drift_window_captures", "Captures of the champion in the latest drift window", registry=r
        )
        self.drift_confidence = Gauge(
            "graft_admin_drift_mean_confidence", "Mean top-1 probability", ["source"], registry=r
        )
        self.drift_low_margin = Gauge(
            "graft_admin_drift_low_margin_share", "Share of answers with a top-1/top-2 margin below low_margin",
            ["source"], registry=r,
        )  # fmt: skip
        self.drift_share = Gauge(
            "graft_admin_drift_predicted_share", "Share of top-1 answers per label", ["label", "source"], registry=r
        )
