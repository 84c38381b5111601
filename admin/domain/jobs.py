"""Retraining jobs: one at a time, each a background thread that drives the job runner.

Lifecycle: ``queued`` -> ``running`` (phases: snapshot, checking, training, evaluating, exporting, deploying,
smoke_test, replaying, switching) -> ``succeeded`` (promoted) | ``held`` (waits for an admin: new labels, or the
data check flagged new samples) | ``rejected`` (the gate said no) | ``failed``.
Every transition is written to SQLite before it is acted on, so a restart finds each job where it
was; :meth:`JobManager.recover` then marks unfinished ones ``failed`` ("interrupted").

The job's :class:`training.config.TrainConfig` is built and validated when the job is asked for, so a
bad setting is a 422 at the API and never a failed job; the job writes it to ``JOB_DIR/train-config.json``
and the runner runs ``graft train --config`` on it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from admin.domain.job_evaluation import JobEvaluationPlan, plan_in_job
from admin.domain.job_gate import check_data, evaluate_candidate, hold_reasons
from admin.domain.job_services import JobServices, default_prepare
from admin.domain.judge import EvaluateFn, default_evaluate
from admin.domain.label_check import LabelCheck
from admin.domain.recipe import RetrainRequest, build_train_config
from admin.domain.replay import ReplayRejectedError, check
from admin.domain.snapshot import Snapshot, base_items, hold_back_new_labels, take_snapshot, write_snapshot
from admin.runners.base import TrainRequest
from admin.runners.local import kill_orphan
from admin.store.rows import Job, JobStatus, ModelVersion
from graft.core.errors import ConflictError, GraftError, NotFoundError
from graft.core.manifest import Item
from graft.core.util import utc_now
from training.config import TrainConfig, write_config_file

log = logging.getLogger(__name__)

CONFIG_FILE = "train-config.json"
__all__ = ["EvaluateFn", "JobManager", "JobServices", "default_evaluate", "default_prepare", "smoke_images"]


class JobInterruptedError(GraftError):
    """The job was cancelled or the service is shutting down."""


class TrainingFailedError(GraftError):
    """The training run ended without a model (its log tail is in the message)."""


# Corrections that change the data a retraining sees: after one of these, a job is not "without new data".
DATA_CHANGES = ("sample.relabel", "sample.delete", "label.rename", "label.merge", "label.remove", "review.erase")



class JobManager:
    def __init__(self, services: JobServices):
        self.s = services
        self._threads: dict[str, threading.Thread] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._notes: dict[str, list[str]] = {}  # what the job report must say beside the gate's reason
        self._deadlines: dict[str, float] = {}  # monotonic: GRAFT_JOB_TIMEOUT_S bounds training and evaluation
        self._lock = threading.Lock()
        self._stopping = False

    # ------------------------------------------------------------------ API
    def start(self, request: RetrainRequest, trigger: str = "api") -> Job:
        """Queue a job and start its thread; ConflictError (409) while another job is active,
        ConfigInvalidError (422) when the request makes an invalid training configuration."""
        job_id = uuid.uuid4().hex[:12]
        job_dir = (self.s.settings.state_dir / "jobs" / job_id).resolve()
        champion = self.s.registry.champion()
        config = build_train_config(
            job_dir / "manifest.json", job_dir / "run", champion, self.s.settings.train_args, request
        )
        with self._lock:
            def reserve() -> str:
                version = self.s.registry.next_version()
                self.s.registry.create(
                    version, status="training", source="job", job_id=job_id,
                    parent_version=champion.version if champion else None,
                )  # fmt: skip
                return version

            version = self.s.jobs.create(job_id, trigger, request.model_dump(exclude_defaults=True), job_dir, reserve)
            self.s.jobs.update(job_id, config=config.model_dump(mode="json", exclude_unset=True))
            if note := self._no_new_data(champion):
                self._notes[job_id] = [note]
                self.s.jobs.update(job_id, reason=note)  # said before training, while the job runs
            self._cancel[job_id] = threading.Event()
            thread = threading.Thread(target=self._run, args=(job_id, config), name=f"job-{job_id}", daemon=True)
            self._threads[job_id] = thread
        self.s.metrics.job_running.set(1)
        thread.start()
        log.info("job %s queued (%s): candidate version %s", job_id, trigger, version)
        return self.get(job_id)

    def _no_new_data(self, champion: ModelVersion | None) -> str | None:
        if champion is None or self.s.samples.max_seq() > champion.max_sample_seq:
            return None
        if self.s.audit is not None and self.s.audit.count_since(champion.created_at, DATA_CHANGES):
            return None  # relabelled or deleted samples change what trains and what judges
        return (f"note: no labelled samples arrived since version {champion.version} was trained, so this candidate "
                "can differ from it only by its recipe or by chance")  # fmt: skip

    def get(self, job_id: str) -> Job:
        job = self.s.jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id!r}: POST /v1/retrain starts one, GET /v1/jobs lists them")
        return job

    def recent(self, limit: int = 50) -> list[Job]:
        return self.s.jobs.recent(limit)

    def active(self) -> str | None:
        return self.s.jobs.active_id()

    def last_snapshot_seq(self) -> int:
        return self.s.jobs.last_snapshot_seq()

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if not job.active:
            raise ConflictError(f"job {job_id} has already finished ({job.status})")
        event = self._cancel.get(job_id)
        if event is not None:
            event.set()
        return job

    def wait(self, job_id: str, timeout: float | None = None) -> None:
        thread = self._threads.get(job_id)
        if thread is not None:
            thread.join(timeout)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the running job (it ends ``failed``, interrupted) and wait for its thread."""
        self._stopping = True
        for event in self._cancel.values():
            event.set()
        for thread in list(self._threads.values()):
            thread.join(timeout)

    def recover(self) -> list[str]:
        """At start-up: jobs a previous process left active are failed as interrupted; champion untouched."""
        jobs = self.s.jobs.unfinished()
        for job in jobs:
            if job.pid:
                kill_orphan(job.pid, str(job.job_dir or "."))
            try:
                self.s.runner.cancel(job.id)
            except GraftError as e:
                log.warning("job %s: could not cancel its training run: %s", job.id, e)
            reason = (
                f"interrupted: the admin service stopped while the job was in phase '{job.phase}'; "
                "the model in service was not changed"
            )
            self._finish(job.id, "failed", reason, record_metrics=False)
        if jobs:
            log.warning("marked %d interrupted job(s) as failed", len(jobs))
        return [j.id for j in jobs]

    # ------------------------------------------------------------------ the job thread
    def _run(self, job_id: str, config: TrainConfig) -> None:
        started = time.monotonic()
        self._deadlines[job_id] = started + self.s.settings.job_timeout_s
        try:
            self.s.jobs.update(job_id, status="running", phase="snapshot", started_at=utc_now())
            self._execute(job_id, config)
        except JobInterruptedError as e:
            self._finish(job_id, "failed", f"interrupted: {e}; the model in service was not changed")
        except GraftError as e:
            self._finish(job_id, "failed", f"{type(e).__name__}: {e}")
        except Exception as e:  # a bug must fail the job, never kill the service
            log.exception("job %s crashed", job_id)
            self._finish(job_id, "failed", f"internal error: {type(e).__name__}: {e}")
        finally:
            job = self.s.jobs.get(job_id)
            outcome = job.status if job else "failed"
            self.s.metrics.job_duration.labels(outcome=outcome).observe(time.monotonic() - started)
            self.s.metrics.job_running.set(0)
            self._cancel.pop(job_id, None)
            self._deadlines.pop(job_id, None)

    def _execute(self, job_id: str, config: TrainConfig) -> None:
        job = self.get(job_id)
        assert job.candidate_version is not None and job.job_dir is not None
        version, job_dir = job.candidate_version, job.job_dir
        snap = self._snapshot(job_id, job_dir)
        champion = self.s.registry.champion()
        check = self._check_data(job_id, job_dir, snap, champion)
        # On Kubernetes the training Job also predicts the holdout (the admin falls back to its child).
        in_job = plan_in_job(self.s.runner, job_dir, config.output, champion.run_dir if champion else None,
                             [(i.path, i.label) for i in snap.holdout], self.s.evaluate, self.s.prepare,
                             self.s.settings.eval_device)  # fmt: skip
        run_dir = self._train(job_id, job_dir, config, in_job)
        self._check_cancel(job_id)
        decision, card = evaluate_candidate(self.s, job_id, version, run_dir, snap, champion, self._deadline(job_id),
                                            self._cancel.get(job_id), in_job)  # fmt: skip
        if not decision.passed:
            self.s.registry.update(version, status="rejected")
            advice = f"; what to do next: {'; '.join(decision.advice)}" if decision.advice else ""
            self._finish(job_id, "rejected", decision.reason + advice)
            return
        self.s.registry.update(version, status="accepted")
        if why := hold_reasons(self.s, job_id, decision, check):
            self._finish(job_id, "held", f"held for an admin: {decision.reason}; {'; '.join(why)}: "
                                         f"POST /v1/models/{version}/promote")  # fmt: skip
            return
        self._check_cancel(job_id)  # last moment to stop: from here on the swap runs to its end
        images = smoke_images(snap.holdout, card.labels, self.s.settings.smoke_images)
        try:
            self.s.promoter.put_in_service(version, "promote", images, job_id=job_id,
                                           on_phase=lambda p: self.s.jobs.update(job_id, phase=p),
                                           vet=self._shadow_replay(job_id, champion))  # fmt: skip
        except ReplayRejectedError as e:
            self.s.registry.update(version, status="rejected")
            self._finish(job_id, "rejected", f"{e}; {decision.reason}")
            return
        self.s.metrics.serving_accuracy.set(decision.candidate_all.accuracy)
        self._finish(job_id, "succeeded", f"promoted version {version}: {decision.reason}", promoted=True)

    def _check_data(self, job_id: str, job_dir: Path, snap: Snapshot,
                    champion: ModelVersion | None) -> LabelCheck | None:  # fmt: skip
        check = check_data(self.s, job_id, job_dir, snap, champion, self._deadline(job_id), self._cancel.get(job_id))
        if check is not None and check.needs_review:
            self._notes[job_id] = [*self._notes.get(job_id, []), check.summary()]
            self.s.jobs.update(job_id, reason="; ".join(self._notes[job_id]))  # said while the job trains
        return check

    def _deadline(self, job_id: str) -> float:
        """Monotonic: GRAFT_JOB_TIMEOUT_S from the job's start bounds its training and its evaluations."""
        return self._deadlines.get(job_id, time.monotonic() + self.s.settings.job_timeout_s)

    def _shadow_replay(self, job_id: str, champion: ModelVersion | None) -> Callable[[ModelVersion], None] | None:
        """The promoter's last check: the champion's captured traffic replayed to the candidate."""
        shadow = self.s.shadow
        if shadow is None:
            return None

        def vet(candidate: ModelVersion) -> None:
            self.s.jobs.update(job_id, phase="replaying")
            report = shadow(candidate.version, champion.version if champion else None)
            if report is None:
                return
            self.s.jobs.update(job_id, replay=report.as_dict())
            metrics = {**self.s.registry.get(candidate.version).metrics, "replay": report.as_dict()}
            self.s.registry.update(candidate.version, metrics=metrics)
            check(report, self.s.settings.replay_min_agreement)

        return vet

    def _snapshot(self, job_id: str, job_dir: Path) -> Snapshot:
        source = self.s.base()
        base = base_items(source.data, source.manifest, self.s.settings.holdout_fraction)
        notes = list(source.warnings)
        snap = take_snapshot(self.s.samples, base)
        champion = self.s.registry.champion()
        notes += hold_back_new_labels(snap, champion.labels if champion else [], self.s.settings.min_label_samples)
        self._notes[job_id] = self._notes.get(job_id, []) + notes
        snap = write_snapshot(snap, job_dir / "manifest.json")
        self.s.jobs.update(job_id, progress=0.05, dataset_digest=snap.digest, max_sample_seq=snap.max_sample_seq)
        log.info("job %s: snapshot %s: %d train, %d holdout", job_id, snap.digest, len(snap.train), len(snap.holdout))
        return snap

    def _train(self, job_id: str, job_dir: Path, config: TrainConfig, in_job: JobEvaluationPlan | None) -> Path:
        self.s.jobs.update(job_id, phase="training")
        config.output.mkdir(parents=True, exist_ok=True)
        config_file = write_config_file(config, job_dir / CONFIG_FILE)
        inputs = tuple(p for p in (config.manifest, config.init_from, config.teacher) if p is not None)
        left = self._deadline(job_id) - time.monotonic()
        request = TrainRequest(job_id=job_id, config_file=config_file, output_dir=config.output, inputs=inputs,
                               evaluation=in_job.request if in_job else None, timeout_s=max(1.0, left))  # fmt: skip
        self.s.runner.submit(request)
        pid = getattr(self.s.runner, "pid", lambda _j: None)(job_id)
        if pid:
            self.s.jobs.update(job_id, pid=pid)
        self._poll_training(job_id)
        return config.output

    def _poll_training(self, job_id: str) -> None:
        deadline = self._deadline(job_id)
        cancel = self._cancel[job_id]
        while True:
            status = self.s.runner.status(job_id)
            self.s.jobs.update(job_id, progress=round(0.05 + 0.75 * status.progress, 4))
            if status.state == "succeeded":
                return
            if status.state == "failed":
                raise TrainingFailedError(status.message or "training failed")
            if cancel.is_set() or time.monotonic() > deadline:
                self.s.runner.cancel(job_id)
                if not cancel.is_set():
                    raise JobInterruptedError(f"training ran past {self.s.settings.job_timeout_s:.0f}s")
                self._check_cancel(job_id)
            cancel.wait(self.s.settings.job_poll_s)

    def _check_cancel(self, job_id: str) -> None:
        if self._cancel[job_id].is_set():
            raise JobInterruptedError("the admin service is stopping" if self._stopping else "cancelled")

    # ------------------------------------------------------------------ bookkeeping
    def _finish(
        self, job_id: str, status: JobStatus, reason: str, promoted: bool = False, record_metrics: bool = True
    ) -> None:
        job = self.s.jobs.get(job_id)
        notes = self._notes.pop(job_id, [])
        reason = "; ".join([reason, *notes])
        fields: dict[str, object] = {"status": status, "reason": reason, "promoted": int(promoted),
                                     "finished_at": utc_now(), "pid": None}  # fmt: skip
        if status != "failed":
            fields["progress"] = 1.0  # a failed job keeps the progress it reached
        self.s.jobs.update(job_id, **fields)
        if job is not None and status == "failed" and job.candidate_version:
            model = self.s.registry.find(job.candidate_version)
            if model is not None and model.status == "training":
                self.s.registry.update(job.candidate_version, status="failed")
        if record_metrics:
            self.s.metrics.jobs.labels(outcome=status).inc()
        first = reason.splitlines()[0] if reason else ""  # the gate's reason may already start "rejected:"
        log.info("job %s %s", job_id, first if first.startswith(f"{status}:") else f"{status}: {first}")


def smoke_images(holdout: Sequence[Item], labels: Sequence[str], n: int) -> list[Path]:
    """Real holdout images of labels the model knows, spread over the labels (round robin)."""
    by_label: dict[str, list[Path]] = {}
    for item in holdout:
        if item.label in labels and item.path.is_file():
            by_label.setdefault(item.label, []).append(item.path)
    out: list[Path] = []
    while len(out) < n and any(by_label.values()):
        for label in sorted(by_label):
            if by_label[label] and len(out) < n:
                out.append(by_label[label].pop(0))
    return out
