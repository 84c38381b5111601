"""What a retraining job touches (:class:`JobServices`), built once by the app and shared by the job's phases."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from admin.domain.adoption import BaseData
from admin.domain.judge import EvaluateFn, default_evaluate
from admin.domain.promotion import Promoter
from admin.domain.replay import ReplayReport
from admin.metrics import AdminMetrics
from admin.runners.base import JobRunner
from admin.settings import AdminSettings
from admin.store.audit import AuditStore
from admin.store.jobs import JobStore
from admin.store.registry import Registry
from admin.store.samples import SampleStore

ShadowFn = Callable[[str, str | None], ReplayReport | None]  # (candidate, champion) -> the replay, if any
# Gives a candidate run the champion's export settings (and its INT8 model when the champion serves INT8).
PrepareFn = Callable[[Path, Path | None], object]


def default_prepare(run_dir: Path, champion_dir: Path | None) -> object:
    """The candidate is exported as the champion was (INT8 included), so the gate judges what will serve."""
    from training.export_settings import prepare_like

    return prepare_like(run_dir, champion_dir)


@dataclass
class JobServices:
    """Everything a job touches, built once by the app."""

    settings: AdminSettings
    jobs: JobStore
    samples: SampleStore
    registry: Registry
    runner: JobRunner
    promoter: Promoter
    metrics: AdminMetrics
    base: Callable[[], BaseData]  # the first model's data as the service knows it now
    evaluate: EvaluateFn = default_evaluate
    shadow: ShadowFn | None = None
    prepare: PrepareFn = default_prepare
    audit: AuditStore | None = None  # corrections since the champion count as new data
