"""The production feedback loop in one place: captures indexed, the review queue, shadow replay, drift.

:class:`Feedback` owns the parts and a background thread that, every ``capture_scan_s``, indexes new
captures, marks pruned ones gone, refreshes the capture and drift gauges and, when
``retrain_on_drift_psi`` is set, starts a job once the latest window has drifted that far.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from admin.domain.captures import CaptureIndex
from admin.domain.drift import DriftMonitor, ProbabilitiesFn, Profile, default_probabilities
from admin.domain.replay import ReplayReport, replay
from admin.domain.review import AddSamples, ReviewQueue
from admin.metrics import AdminMetrics
from admin.rollouts.base import Replayable, Rollout
from admin.settings import AdminSettings
from admin.store.audit import AuditStore
from admin.store.captures import CaptureStore
from admin.store.db import Database
from admin.store.registry import Registry
from admin.store.samples import SampleStore
from graft.core.errors import ConflictError, GraftError

log = logging.getLogger(__name__)

_SWEEP_EVERY_S = 60.0
_PASS = 100  # captures indexed per pass
_DRIFT_TRIGGER_KEY = "drift_retrain_at"
_DRIFT_HISTORY_WINDOWS = 168  # the most windows GET /v1/drift reports: older drift tallies are dropped


class Feedback:
    def __init__(
        self,
        settings: AdminSettings,
        db: Database,
        samples: SampleStore,
        registry: Registry,
        metrics: AdminMetrics,
        add_samples: AddSamples,
        holdout_images: Callable[[Sequence[str]], list[Path]],
        start_job: Callable[[str], object],
        rollout: Rollout | None,
        probabilities: ProbabilitiesFn = default_probabilities,
        audit: AuditStore | None = None,
        housekeeping: Callable[[], object] | None = None,
    ):
        self.settings = settings
        self.housekeeping = housekeeping  # run every sweep interval too (the deleted samples' files)
        self.db = db
        self.registry = registry
        self.metrics = metrics
        self.holdout_images = holdout_images
        self.start_job = start_job
        self.rollout = rollout
        self.store = CaptureStore(db)
        self.index = CaptureIndex(self.store, samples, settings.capture_path, settings.max_image_pixels)
        self.review = ReviewQueue(self.store, self.index, add_samples, audit)
        self.drift = DriftMonitor(db, self.store, probabilities, settings.eval_device, settings.low_margin,
                                  settings.drift_min_captures)  # fmt: skip
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sweep = 0.0

    # ------------------------------------------------------------------ drift
    def reference(self) -> Profile | None:
        champion = self.registry.champion()
        if champion is None:
            return None
        return self.drift.reference(champion, lambda: self.holdout_images(champion.labels))

    def drift_report(self, windows: int, window_s: float | None = None) -> dict[str, Any]:
        champion, name = self.registry.champion(), self.registry.model_name
        if champion is None or name is None:
            raise ConflictError("no model in service yet: drift compares its traffic with its holdout")
        self.index.sync_if_idle(name)
        reference = self.reference()
        report = self.drift.report(name, champion, reference, window_s or self.settings.drift_window_s, windows)
        self._drift_gauges(report)
        return report

    def _drift_gauges(self, report: dict[str, Any]) -> None:
        latest, reference = report["windows"][0], report["reference"]
        m = self.metrics
        m.drift_psi.set(float("nan") if latest["psi"] is None else latest["psi"])
        m.drift_window_captures.set(latest["captures"])
        for source, values in (("traffic", latest), ("holdout", reference or {})):
            if values.get("mean_confidence") is not None:
                m.drift_confidence.labels(source=source).set(values["mean_confidence"])
                m.drift_low_margin.labels(source=source).set(values["low_margin_share"])
            for label, share in (values.get("shares") or {}).items():
                m.drift_share.labels(label=label, source=source).set(share)
        if latest["captures"]:  # labels the latest window no longer predicts read 0, not their old share
            for label in (reference or {}).get("shares", {}):
                if label not in latest["shares"]:
                    m.drift_share.labels(label=label, source="traffic").set(0.0)

    # ------------------------------------------------------------------ shadow replay
    def shadow(self, candidate_version: str, champion_version: str | None) -> ReplayReport | None:
        """Replay the champion's latest captured traffic to the candidate (None when replay is off or
        impossible: no champion, or a rollout that cannot send to one version)."""
        name, n = self.registry.model_name, self.settings.replay_captures
        if not n or name is None or champion_version is None or not isinstance(self.rollout, Replayable):
            return None
        rollout = self.rollout
        self.index.sync(name)
        rows = self.store.recent(name, n, version=champion_version)
        return replay(lambda payload: rollout.predict(name, candidate_version, payload), rows,
                      self.review.image_bytes, candidate_version, champion_version)  # fmt: skip

    # ------------------------------------------------------------------ the background pass
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="admin-captures", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        _lower_priority(self.settings.capture_nice)
        if (name := self.registry.model_name) is not None:
            try:
                self.index.warm(name)
            except Exception:  # the loop must start anyway; the first pass loads them
                log.exception("capture hashes not loaded ahead")
        while not self._stop.wait(self.settings.capture_scan_s):
            try:
                self.run_pass()
            except GraftError as e:
                log.warning("capture pass: %s", e)
            except Exception:  # the loop must outlive a bug in one pass
                log.exception("capture pass failed")

    def run_pass(self) -> None:
        sweep = time.monotonic() - self._last_sweep > _SWEEP_EVERY_S
        if sweep:
            self._last_sweep = time.monotonic()
            if self.housekeeping is not None:
                self.housekeeping()
        name = self.registry.model_name
        if name is None:
            return
        # Small passes: an API call waiting on the index lock waits for one pass at most.
        indexed = 0
        while (n := self.index.sync(name, limit=_PASS)) and not self._stop.is_set():
            indexed += n
            if n < _PASS:
                break
        if sweep or indexed:  # new captures mean the workers may have pruned: the index follows the budget
            # pruned captures of the current drift window keep their row (marked gone) until they leave it
            self.index.sweep(name, self.settings.capture_index_max, time.time() - self.settings.drift_window_s)
        if sweep:
            self.store.forget_windows(time.time() - _DRIFT_HISTORY_WINDOWS * self.settings.drift_window_s)
        totals: dict[str, int] = {}
        for counts in self.store.counts(name).values():
            for status, k in counts.items():
                totals[status] = totals.get(status, 0) + k
        for status, k in totals.items():
            self.metrics.captures.labels(status=status).set(k)
        if totals and self.registry.champion() is not None:
            report = self.drift_report(windows=1)
            self._maybe_retrain(report["windows"][0]["psi"])

    def _maybe_retrain(self, psi: float | None) -> None:
        threshold = self.settings.retrain_on_drift_psi
        if threshold is None or psi is None or psi < threshold:
            return
        last = float(self.db.get_meta(_DRIFT_TRIGGER_KEY) or 0)
        if time.time() - last < self.settings.drift_retrain_cooldown_s:
            return
        try:
            job = self.start_job("drift")
        except ConflictError:
            return  # a job is running: it will train on what is there, the trigger fires again later if needed
        self.db.set_meta(_DRIFT_TRIGGER_KEY, str(time.time()))
        log.warning("drift: PSI %.3f >= %.3f started job %s", psi, threshold, getattr(job, "id", "?"))


def _lower_priority(nice: int) -> None:
    """Run this thread at a lower CPU priority: indexing is background work, and on a machine it shares with
    the inference workers it should take the cores they leave idle, not the ones they need. On Linux the
    thread also joins SCHED_IDLE, which only runs when nothing else wants the core (a niced thread still
    preempts a worker's intra-op threads mid-operator). Lowering a priority needs no privilege; Linux keeps
    it per thread."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    me = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + nice))
        if hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(me, os.SCHED_IDLE, os.sched_param(0))
    except OSError as e:
        log.info("capture indexing keeps its priority: %s", e)
