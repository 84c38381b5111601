"""Retraining jobs: one at a time, each a background thread that drives the job runner.

Lifecycle: ``queued`` -> ``running`` (phases: snapshot, training, evaluating, exporting, deploying,
smoke_test, switching) -> ``succeeded`` (promoted) | ``rejected`` (the gate said no) | ``failed``.
Every transition is written to SQLite before it is acted on, so a restart finds each job where it
was; :meth:`JobManager.recover` then marks unfinished ones ``failed`` ("interrupted").
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from admin.dataset import Item, Snapshot, base_items, take_snapshot, write_snapshot
from admin.db import Database, dumps, loads
from admin.gate import GateDecision, decide
from admin.metrics import AdminMetrics
from admin.ports import JobRunner, TrainRequest
from admin.promotion import Promoter
from admin.registry import Registry
from admin.runner_local import kill_orphan
from admin.samples import SampleStore
from admin.settings import AdminSettings
from graft.artifact import read_card, utc_now
from graft.errors import ConflictError, GraftError, NotFoundError

log = logging.getLogger(__name__)

EvaluateFn = Callable[[Path, Sequence[tuple[Path, str]], str], tuple[list[str | None], list[str]]]
ACTIVE = ("queued", "running")


def default_evaluate(
    run_dir: Path, samples: Sequence[tuple[Path, str]], device: str
) -> tuple[list[str | None], list[str]]:
    """Top-1 label per image (None when unreadable) and the run's labels, via the training library."""
    from training.evaluate import evaluate_run

    report = evaluate_run(run_dir, list(samples), device)
    return list(report["predictions"]), list(report["labels"])


class JobInterruptedError(GraftError):
    """The job was cancelled or the service is shutting down."""


class TrainingFailedError(GraftError):
    """The training run ended without a model (its log tail is in the message)."""


@dataclass
class JobServices:
    """Everything a job touches, built once by the app."""

    settings: AdminSettings
    db: Database
    store: SampleStore
    registry: Registry
    runner: JobRunner
    promoter: Promoter
    metrics: AdminMetrics
    evaluate: EvaluateFn = default_evaluate


class JobManager:
    def __init__(self, services: JobServices):
        self.s = services
        self._threads: dict[str, threading.Thread] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._stopping = False

    # ------------------------------------------------------------------ API
    def start(self, params: dict[str, Any], trigger: str = "api") -> dict[str, Any]:
        """Queue a job and start its thread; ConflictError (409) while another job is active."""
        job_id = uuid.uuid4().hex[:12]
        job_dir = (self.s.settings.state_dir / "jobs" / job_id).resolve()
        with self._lock:
            try:
                with self.s.db.tx() as conn:
                    version = self.s.registry.next_version()
                    conn.execute(
                        "INSERT INTO jobs (id, status, phase, trigger, params, candidate_version, job_dir, created_at)"
                        " VALUES (?, 'queued', 'queued', ?, ?, ?, ?, ?)",
                        (job_id, trigger, dumps(params), version, str(job_dir), utc_now()),
                    )
                    champion = self.s.registry.default_version()
                    self.s.registry.create(
                        version, status="training", source="job", job_id=job_id, parent_version=champion
                    )
            except sqlite3.IntegrityError as e:
                active = self.s.db.one("SELECT id FROM jobs WHERE status IN ('queued', 'running')")
                raise ConflictError(
                    f"job {active['id'] if active else '?'} is still running: one job at a time (GET /v1/jobs/ID)"
                ) from e
            self._cancel[job_id] = threading.Event()
            thread = threading.Thread(target=self._run, args=(job_id,), name=f"job-{job_id}", daemon=True)
            self._threads[job_id] = thread
        self.s.metrics.job_running.set(1)
        thread.start()
        log.info("job %s queued (%s): candidate version %s", job_id, trigger, version)
        return self.get(job_id)

    def get(self, job_id: str) -> dict[str, Any]:
        row = self.s.db.one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise NotFoundError(f"no job {job_id!r}: POST /v1/retrain starts one, GET /v1/jobs lists them")
        return public_job(row)

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.s.db.all("SELECT * FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,))
        return [public_job(r) for r in rows]

    def active(self) -> str | None:
        row = self.s.db.one("SELECT id FROM jobs WHERE status IN ('queued', 'running')")
        return None if row is None else str(row["id"])

    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        if job["status"] not in ACTIVE:
            raise ConflictError(f"job {job_id} has already finished ({job['status']})")
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
        rows = self.s.db.all("SELECT * FROM jobs WHERE status IN ('queued', 'running')")
        for row in rows:
            job_dir = Path(row["job_dir"] or ".")
            if row["pid"]:
                kill_orphan(int(row["pid"]), str(job_dir))
            try:
                self.s.runner.cancel(row["id"])
            except GraftError as e:
                log.warning("job %s: could not cancel its training run: %s", row["id"], e)
            reason = (
                f"interrupted: the admin service stopped while the job was in phase '{row['phase']}'; "
                "the model in service was not changed"
            )
            self._finish(row["id"], "failed", reason, record_metrics=False)
        if rows:
            log.warning("marked %d interrupted job(s) as failed", len(rows))
        return [r["id"] for r in rows]

    # ------------------------------------------------------------------ the job thread
    def _run(self, job_id: str) -> None:
        started = time.monotonic()
        try:
            self._update(job_id, status="running", phase="snapshot", started_at=utc_now())
            self._execute(job_id)
        except JobInterruptedError as e:
            self._finish(job_id, "failed", f"interrupted: {e}; the model in service was not changed")
        except GraftError as e:
            self._finish(job_id, "failed", f"{type(e).__name__}: {e}")
        except Exception as e:  # a bug must fail the job, never kill the service
            log.exception("job %s crashed", job_id)
            self._finish(job_id, "failed", f"internal error: {type(e).__name__}: {e}")
        finally:
            row = self.s.db.one("SELECT status FROM jobs WHERE id = ?", (job_id,))
            outcome = row["status"] if row else "failed"
            self.s.metrics.job_duration.labels(outcome=outcome).observe(time.monotonic() - started)
            self.s.metrics.job_running.set(0)
            self._cancel.pop(job_id, None)

    def _execute(self, job_id: str) -> None:
        job = self.s.db.one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        assert job is not None
        version, job_dir = str(job["candidate_version"]), Path(job["job_dir"])
        params = loads(job["params"], {})
        snap = self._snapshot(job_id, job_dir)
        champion = self.s.registry.champion()
        run_dir = self._train(job_id, job_dir, snap, params, champion)
        self._check_cancel(job_id)
        decision, card = self._evaluate(job_id, version, run_dir, snap, champion)
        if not decision.passed:
            self.s.registry.update(version, status="rejected")
            self._finish(job_id, "rejected", decision.reason)
            return
        self.s.registry.update(version, status="accepted")
        self._check_cancel(job_id)  # last moment to stop: from here on the swap runs to its end
        images = smoke_images(snap.holdout, card.labels, self.s.settings.smoke_images)
        self.s.promoter.put_in_service(
            version, "promote", images, job_id=job_id, on_phase=lambda p: self._update(job_id, phase=p)
        )
        self.s.metrics.serving_accuracy.set(decision.candidate_all.accuracy)
        self._finish(job_id, "succeeded", f"promoted version {version}: {decision.reason}", promoted=1)

    def _snapshot(self, job_id: str, job_dir: Path) -> Snapshot:
        st = self.s.settings
        base = base_items(st.base_data, st.base_manifest, st.holdout_fraction)
        snap = write_snapshot(take_snapshot(self.s.store, base), job_dir / "manifest.json")
        self._update(job_id, progress=0.05, dataset_digest=snap.digest, max_sample_seq=snap.max_sample_seq)
        log.info("job %s: snapshot %s: %d train, %d holdout", job_id, snap.digest, len(snap.train), len(snap.holdout))
        return snap

    def _train(
        self, job_id: str, job_dir: Path, snap: Snapshot, params: dict[str, Any], champion: dict[str, Any] | None
    ) -> Path:
        self._update(job_id, phase="training")
        run_dir = job_dir / "run"
        warm = bool(params.get("warm_start")) and champion is not None and champion.get("run_dir")
        request = TrainRequest(
            job_id=job_id,
            manifest=snap.manifest or job_dir / "manifest.json",
            output_dir=run_dir,
            overrides=recipe(self.s.settings.train_args, champion, params),
            parent_run=Path(champion["run_dir"]) if warm and champion else None,
        )
        self.s.runner.submit(request)
        pid = getattr(self.s.runner, "pid", lambda _j: None)(job_id)
        if pid:
            self._update(job_id, pid=pid)
        self._poll_training(job_id, request)
        return run_dir

    def _poll_training(self, job_id: str, request: TrainRequest) -> None:
        deadline = time.monotonic() + self.s.settings.job_timeout_s
        cancel = self._cancel[job_id]
        while True:
            status = self.s.runner.status(job_id)
            self._update(job_id, progress=round(0.05 + 0.75 * status.progress, 4))
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

    def _evaluate(
        self, job_id: str, version: str, run_dir: Path, snap: Snapshot, champion: dict[str, Any] | None
    ) -> tuple[GateDecision, Any]:
        self._update(job_id, phase="evaluating", progress=0.8)
        card = read_card(run_dir)
        self.s.registry.update(
            version,
            run_dir=run_dir.resolve(),
            labels=card.labels,
            recipe={"backbone": card.backbone, **card.recipe},
            lineage=card.lineage.model_dump(mode="json"),
            dataset_digest=snap.digest,
            max_sample_seq=snap.max_sample_seq,
            num_train=len(snap.train),
            num_holdout=len(snap.holdout),
            metrics={"training": card.metrics},
        )
        holdout = [(i.path, i.label) for i in snap.holdout]
        st = self.s.settings
        cand_pred, cand_labels = self.s.evaluate(run_dir, holdout, st.eval_device)
        champ_pred = champ_labels = None
        if champion is not None:
            champ_pred, champ_labels = self.s.evaluate(Path(champion["run_dir"]), holdout, st.eval_device)
        truth = [label for _, label in holdout]
        decision = decide(
            truth,
            cand_pred,
            cand_labels,
            champ_pred,
            champ_labels,
            tolerance=st.gate_tolerance,
            floor=st.gate_floor,
            min_holdout=st.gate_min_holdout,
        )
        if decision.champion is not None:
            self.s.metrics.serving_accuracy.set(decision.champion.accuracy)
        self.s.registry.update(version, metrics={"training": card.metrics, "holdout": decision.candidate_all.as_dict()})
        self._update(
            job_id,
            progress=0.9,
            gate=dumps(decision.as_dict()),
            champion_version=champion and champion["version"],
            candidate_metrics=dumps(decision.candidate.as_dict()),
            champion_metrics=dumps(decision.champion.as_dict() if decision.champion else None),
        )
        log.info("job %s: %s", job_id, decision.reason)
        return decision, card

    # ------------------------------------------------------------------ bookkeeping
    def _update(self, job_id: str, **fields: Any) -> None:
        assignments = ", ".join(f"{k} = ?" for k in fields)
        self.s.db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*fields.values(), job_id])

    def _finish(self, job_id: str, status: str, reason: str, promoted: int = 0, record_metrics: bool = True) -> None:
        row = self.s.db.one("SELECT candidate_version, status FROM jobs WHERE id = ?", (job_id,))
        fields: dict[str, Any] = {"status": status, "reason": reason, "promoted": promoted, "finished_at": utc_now()}
        if status != "failed":
            fields["progress"] = 1.0  # a failed job keeps the progress it reached
        self._update(job_id, pid=None, **fields)
        if row is not None and status == "failed" and row["candidate_version"]:
            model = self.s.db.one("SELECT status FROM models WHERE version = ?", (row["candidate_version"],))
            if model is not None and model["status"] == "training":
                self.s.registry.update(str(row["candidate_version"]), status="failed")
        if record_metrics:
            self.s.metrics.jobs.labels(outcome=status).inc()
        log.info("job %s %s: %s", job_id, status, reason.splitlines()[0] if reason else "")


# Recipe keys of a champion's model.json that are ``graft train`` flags taking a value: a retraining
# replays the recipe that produced the model in service, on more data (the freezing, the optimiser...).
_REPLAYED = (
    "backbone", "weights", "freeze_until", "trainable_stages", "frozen_bn", "optimizer", "lr", "lr_decay",
    "weight_decay", "label_smoothing", "schedule", "warmup_epochs", "head_warmup_epochs", "epochs",
    "batch_size", "patience", "balance", "seed",
)  # fmt: skip


def recipe(defaults: dict[str, Any], champion: dict[str, Any] | None, params: dict[str, Any]) -> dict[str, Any]:
    """Training flags: the champion's recipe, then the settings' ``train_args``, then the request."""
    out: dict[str, Any] = {}
    if champion is not None:
        rec = champion.get("recipe") or {}
        out.update({k: rec[k] for k in _REPLAYED if rec.get(k) is not None and not isinstance(rec[k], dict | list)})
        if rec.get("augment") is True:
            out["augment"] = True
    out.update(defaults)
    out.update(params.get("overrides") or {})
    out.update({k: params[k] for k in ("epochs", "backbone", "weights", "seed") if params.get(k) is not None})
    return out


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


def public_job(row: sqlite3.Row) -> dict[str, Any]:
    gate = loads(row["gate"])
    return {
        "id": row["id"],
        "status": row["status"],
        "phase": row["phase"],
        "progress": row["progress"],
        "trigger": row["trigger"],
        "params": loads(row["params"], {}),
        "candidate_version": row["candidate_version"],
        "champion_version": row["champion_version"],
        "metrics": {"candidate": loads(row["candidate_metrics"]), "champion": loads(row["champion_metrics"])},
        "new_labels": gate["new_labels"] if gate else [],
        "gate": gate,
        "promoted": bool(row["promoted"]),
        "reason": row["reason"],
        "dataset": {"digest": row["dataset_digest"], "max_sample_seq": row["max_sample_seq"]},
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
    }
