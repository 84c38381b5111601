"""The admin service object: builds the parts from settings and runs start-up recovery.

``create_app`` owns one of these. Start-up is synchronous and cheap (open SQLite, fail interrupted
jobs, import the initial model); agreeing with TorchServe happens in a background thread, because
``graft serve`` may start the admin while TorchServe is still loading its models.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from admin.domain.adoption import BaseData, adopt, import_run, resolve_base
from admin.domain.corrections import Corrections
from admin.domain.drift import ProbabilitiesFn, default_probabilities
from admin.domain.erasures import Erasures
from admin.domain.feedback import Feedback
from admin.domain.jobs import EvaluateFn, JobManager, JobServices, default_evaluate, smoke_images
from admin.domain.judge import FROZEN_FEATURES
from admin.domain.labels import LabelSet
from admin.domain.promotion import ExportFn, Promoter, default_export
from admin.domain.recipe import RetrainRequest
from admin.domain.samples import SampleIntake, Upload, base_files_by_split
from admin.domain.snapshot import base_items
from admin.domain.undo import ReviewUndo
from admin.metrics import AdminMetrics
from admin.rollouts.base import Rollout
from admin.runners.base import JobRunner
from admin.settings import AdminSettings
from admin.store.audit import AuditStore
from admin.store.db import Database
from admin.store.erasures import ErasureStore
from admin.store.jobs import JobStore
from admin.store.labels import LabelStore
from admin.store.registry import Registry
from admin.store.rows import Actor, Deployment, ModelVersion, SampleSplit, StoredSample
from admin.store.samples import SampleStore
from graft.core.capture import no_capture_key
from graft.core.errors import ConflictError, GraftError
from graft.core.images import fingerprint
from graft.core.manifest import Item
from graft.core.util import private_dir
from training.feature_store import prune_stores

log = logging.getLogger(__name__)


def build_runner(settings: AdminSettings) -> JobRunner:
    if settings.runner == "kubernetes":
        from admin.runners import kubernetes

        return kubernetes.build_runner(settings)
    if settings.runner in ("trainjob", "pytorchjob"):
        from admin.runners import build_crd_runner

        return build_crd_runner(settings)
    from admin.runners.local import LocalJobRunner

    return LocalJobRunner(command=settings.train_command)


def build_rollout(settings: AdminSettings) -> Rollout | None:
    if settings.rollout == "none":
        return None
    if settings.rollout == "kubernetes":
        from admin.rollouts import kubernetes

        k8s = kubernetes.build_rollout(settings)
        k8s.no_capture_key = _no_capture_key(settings)
        return k8s
    if settings.rollout == "kserve":
        from admin.rollouts.kserve import KServeRollout

        ks = KServeRollout(settings.kserve_url, settings.kserve_key_file, settings.torchserve_timeout_s,
                           drain_timeout_s=settings.drain_grace_s + 60.0)
        ks.no_capture_key = _no_capture_key(settings)
        return ks
    from admin.rollouts.torchserve import TorchServeRollout

    ts = TorchServeRollout(
        settings.torchserve_management_url,
        settings.torchserve_inference_url,
        settings.torchserve_key_file,
        settings.torchserve_timeout_s,
        drain_grace_s=settings.drain_grace_s,
    )
    ts.no_capture_key = _no_capture_key(settings)
    return ts


def _no_capture_key(settings: AdminSettings) -> str:
    """The key in the capture folder that keeps the admin's smoke tests and replays out of capture (created once;
    the workers read it). Without a writable capture folder they are captured like any request, and say so."""
    try:
        key = no_capture_key(settings.capture_path, create=True)
    except OSError as e:
        key = None
        log.warning("no no-capture key in %s (%s): smoke tests and replays will be captured", settings.capture_path, e)
    return key or "1"


@dataclass(frozen=True)
class ModelView:
    """A version as the API shows it: the row, plus whether it serves and since when."""

    model: ModelVersion
    default: bool
    promoted_at: str | None


@dataclass(frozen=True)
class SampleStats:
    labels: dict[str, dict[str, int]]
    total: int
    train: int
    holdout: int
    since_champion: int
    champion_version: str | None


class AdminService:
    def __init__(
        self,
        settings: AdminSettings,
        runner: JobRunner | None = None,
        rollout: Rollout | None = None,
        evaluate: EvaluateFn = default_evaluate,
        export: ExportFn = default_export,
        probabilities: ProbabilitiesFn = default_probabilities,
    ):
        self.settings = settings
        private_dir(settings.state_dir)  # tokens, samples and the database: the owner's only (0700)
        self.metrics = AdminMetrics()
        self.db = Database(settings.db_path)
        self.samples = SampleStore(self.db, settings.state_dir)
        self.audit = AuditStore(self.db)
        self.labels = LabelSet(LabelStore(self.db), self.audit)
        self.intake = SampleIntake(self.samples, self.labels, settings.holdout_fraction, settings.max_image_pixels,
                                   settings.max_batch_pixels, self._base_files,
                                   balanced=settings.holdout_split == "balanced")  # fmt: skip
        self.registry = Registry(self.db, settings.model_store, None)  # the name comes with adoption
        self.base = BaseData()
        self._base_files_of: tuple[BaseData, dict[SampleSplit, list[Path]]] | None = None
        self._base_lock = threading.Lock()
        self.rollout = rollout if rollout is not None else build_rollout(settings)
        archive = settings.archive_path if settings.rollout == "torchserve" else None
        self.promoter = Promoter(self.registry, self.rollout, self.metrics, settings.keep_versions, export, archive,
                                 on_default=lambda model: self.labels.adopt(model.labels))  # fmt: skip
        self.feedback = Feedback(settings, self.db, self.samples, self.registry, self.metrics, self.add_samples,
                                 self.holdout_images, self._start_job, self.rollout, probabilities, self.audit,
                                 housekeeping=lambda: self.corrections.sweep())  # fmt: skip
        self.corrections = Corrections(self.db, self.samples, self.labels, self.feedback.store, self.feedback.index,
                                       self.audit, self.served_labels, self._refresh_sample_gauges)  # fmt: skip
        self.undo = ReviewUndo(self.db, self.feedback.review, self.corrections, self.audit)
        self.feedback.review.on_samples_removed = self._refresh_sample_gauges  # an erasure deletes samples too
        # Deleted sample files take their frozen features with them (an erased picture leaves nothing derived).
        self.corrections.on_files_removed = self.feedback.review.on_files_removed = self._prune_frozen_features
        self.intake.erasure_of = self.feedback.index.erasure_of  # an erased picture is never stored again
        self.erasures = Erasures(ErasureStore(self.db), self.audit)  # listed and lifted by an admin
        services = JobServices(
            settings, JobStore(self.db), self.samples, self.registry, runner or build_runner(settings),
            self.promoter, self.metrics, lambda: self.base, evaluate, self.feedback.shadow, audit=self.audit,
        )  # fmt: skip
        self.jobs = JobManager(services)
        self.reconciled = threading.Event()
        self.reconcile_error: str | None = None
        self._stop = threading.Event()
        self._reconciler: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Synchronous start-up: nothing here waits on the network. ConfigError when the model it should
        manage is ambiguous (several in the store, none named) or named but absent: it must not guess."""
        self.jobs.recover()
        self.adopt()
        if n := self.samples.backfill_fingerprints(_fingerprint):
            log.info("fingerprinted %d sample(s) stored before fingerprints existed", n)
        self.corrections.sweep()  # deleted samples' files a job was still reading when the last process stopped
        self._refresh_sample_gauges()

    def adopt(self) -> bool:
        """Know the model in service (adopting it when the registry is empty) and its base data."""
        if adopt(self.settings, self.db, self.registry) is None:
            store, name = self.settings.model_store, self.settings.model_name or "NAME"
            self.reconcile_error = (f"no model in service yet: export one into the model store {store} "
                                    f"(graft export RUN_DIR --name {name} --model-store {store}) or start with "
                                    "--initial-run RUN_DIR")  # fmt: skip
            return False
        champion = self.registry.champion()
        if champion is not None:
            self.labels.adopt(champion.labels)
        self.base = resolve_base(self.settings, self.db, champion.run_dir if champion else None)
        for warning in self.base.warnings:
            log.warning("%s", warning)
        if self.rollout is None:
            self.reconciled.set()
        return True

    @property
    def warnings(self) -> list[str]:
        return list(self.base.warnings)

    def start_background(self) -> None:
        self.feedback.start()
        if self.reconciled.is_set() or self._reconciler is not None:
            return
        self._reconciler = threading.Thread(target=self._reconcile_loop, name="admin-reconcile", daemon=True)
        self._reconciler.start()

    def _reconcile_loop(self) -> None:
        """Until TorchServe's default is the registry's: adopt a model once one appears, then reconcile."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                if self.registry.default_version() is not None or self.adopt():
                    if self.rollout is not None:
                        self.promoter.reconcile()
                    self.reconcile_error = None
                    self.reconciled.set()
                    return
            except GraftError as e:  # ConfigError included: the store may change under an operator's hands
                self.reconcile_error = str(e)
                log.warning("not ready (%s); retrying in %.0fs", e, delay)
            self._stop.wait(delay)
            delay = min(delay * 2, 30.0)

    def ready_problems(self) -> list[str]:
        """Why the service is not ready: no champion yet, or TorchServe's default is not the registry's."""
        problems = []
        if self.registry.default_version() is None:
            problems.append(self.reconcile_error or "no model in service yet")
        elif not self.reconciled.is_set():
            problems.append(f"TorchServe's default is not the registry's yet: {self.reconcile_error or 'checking'}")
        return problems

    def close(self) -> None:
        self._stop.set()
        self.feedback.stop()
        self.jobs.shutdown()
        if self._reconciler is not None:
            self._reconciler.join(5)
        close = getattr(self.rollout, "close", None)
        if callable(close):
            close()
        self.db.close()

    # ------------------------------------------------------------------ samples
    def add_samples(self, uploads: Sequence[Upload], labels: Sequence[str], actor: Actor, *, new_label: bool = False,
                    audit: bool = True) -> list[StoredSample]:  # fmt: skip
        """Validate every upload, store them all or none, count them, record them, and maybe trigger a job.

        ``actor``: the token's role. An admin's new labels join the label set (``new_label`` confirms one the
        typo guard would refuse); the samples token may use known labels only. ``audit``: an entry per new
        sample (the review queue records its own decision instead)."""
        try:
            stored = self.intake.accept(uploads, labels, actor != "samples", new_label=new_label, uploader=actor)
        except GraftError as e:
            self.metrics.samples_rejected.labels(reason=type(e).__name__).inc()
            raise
        for s in stored:
            self.metrics.samples_received.labels(label=s.label, split=s.split, duplicate=str(s.duplicate).lower()).inc()
            if not s.duplicate:
                self.metrics.samples_stored.labels(label=s.label, split=s.split).inc()
        new = [s for s in stored if not s.duplicate]
        if audit and new:
            with self.db.tx():  # one commit for the lot
                for s in new:
                    self.audit.record(actor, "sample.add", s.id, label=s.label, split=s.split)
        if new:
            self.after_new_sample()
        return stored

    def stats(self) -> SampleStats:
        counts = self.samples.counts()
        champion = self.registry.champion()
        return SampleStats(
            labels=counts,
            total=sum(sum(v.values()) for v in counts.values()),
            train=sum(v["train"] for v in counts.values()),
            holdout=sum(v["holdout"] for v in counts.values()),
            since_champion=self.samples.count_since(champion.max_sample_seq if champion else 0),
            champion_version=champion.version if champion else None,
        )

    def after_new_sample(self) -> None:
        """The optional policy trigger: a job after N new samples (off when auto_retrain_after is 0)."""
        n = self.settings.auto_retrain_after
        if n <= 0 or self.jobs.active() is not None:
            return
        champion = self.registry.champion()
        since = max(self.jobs.last_snapshot_seq(), champion.max_sample_seq if champion else 0)
        if self.samples.count_since(since) >= n:
            try:
                job = self.jobs.start(RetrainRequest(), trigger="auto")
                log.info("auto-retrain: %d new samples since the last snapshot started job %s", n, job.id)
            except ConflictError:
                pass  # another request won the race: that job will see these samples too

    def _start_job(self, trigger: str) -> object:
        return self.jobs.start(RetrainRequest(), trigger=trigger)

    def _prune_frozen_features(self, removed: Sequence[Path]) -> None:
        dropped = prune_stores(self.settings.state_dir / FROZEN_FEATURES, removed)
        if dropped:
            log.info("frozen features of %d deleted image(s) removed", dropped)

    def _base_files(self) -> dict[SampleSplit, list[Path]]:
        """The base data's files per split, listed once per base data (the same object until it changes): an
        upload that copies a base holdout picture stays holdout, one that copies a base training picture stays in
        training. The intake reads the files itself."""
        with self._base_lock:
            if self._base_files_of is None or self._base_files_of[0] != self.base:
                items = base_items(self.base.data, self.base.manifest, self.settings.holdout_fraction)
                self._base_files_of = (self.base, base_files_by_split(items))
            return self._base_files_of[1]

    def _refresh_sample_gauges(self, changed: Iterable[str] = ()) -> None:
        """Every label's counts; a ``changed`` label left without samples loses its series (a merged or renamed
        label is not in the label set any more, and metric label values are the set's only)."""
        counts = self.samples.counts()
        for label, splits in counts.items():
            for split, n in splits.items():
                self.metrics.samples_stored.labels(label=label, split=split).set(n)
        for label in set(changed) - set(counts):
            for split in ("train", "holdout"):
                with contextlib.suppress(KeyError):  # never had that series
                    self.metrics.samples_stored.remove(label, split)

    def served_labels(self) -> list[str]:
        champion = self.registry.champion()
        return list(champion.labels) if champion else []

    # ------------------------------------------------------------------ models
    def import_model(self, run_dir: Path, version: str) -> ModelVersion:
        """Register an existing run folder as the default (the registry must know its model name)."""
        return import_run(self.registry, run_dir, version)

    def promote(self, version: str, force: bool = False) -> ModelVersion:
        model = self.registry.get(version)
        if model.status in ("training", "failed"):
            raise ConflictError(f"version {version} is {model.status}: only a trained model can be promoted")
        if model.status == "rejected" and not force:
            raise ConflictError(f"version {version} was rejected by the gate; pass force=true to promote it anyway")
        self.promoter.put_in_service(version, "promote", self._smoke_images(model.labels))
        return self.registry.get(version)

    def rollback(self) -> ModelVersion:
        target = self.registry.rollback_target()
        model = self.registry.get(target)
        self.promoter.put_in_service(target, "rollback", self._smoke_images(model.labels))
        return self.registry.get(target)

    def _holdout(self) -> list[Item]:
        """The holdout as a job would see it now: collected holdout samples first, then the base holdout."""
        items = [Item(s.path, s.label, s.split) for s in self.samples.snapshot(self.samples.max_seq())]
        items = [i for i in items if i.split == "holdout"]
        try:
            base = base_items(self.base.data, self.base.manifest, self.settings.holdout_fraction)
            items += [i for i in base if i.split == "holdout"]
        except GraftError as e:
            log.warning("base data unavailable: %s", e)
        return items

    def holdout_images(self, labels: Sequence[str]) -> list[Path]:
        known = set(labels)
        return [i.path for i in self._holdout() if i.label in known and i.path.is_file()]

    def _smoke_images(self, labels: list[str]) -> list[Path]:
        """Holdout images for a manual promotion, spread over the labels."""
        return smoke_images(self._holdout(), labels, self.settings.smoke_images)

    def model_view(self, version: str) -> ModelView:
        return ModelView(self.registry.get(version), self.registry.default_version() == version,
                         self.registry.promoted_at(version))  # fmt: skip

    @property
    def model_name(self) -> str | None:
        return self.registry.model_name

    def models(self) -> list[ModelView]:
        default = self.registry.default_version()
        return [ModelView(m, m.version == default, self.registry.promoted_at(m.version)) for m in self.registry.all()]

    def history(self) -> list[Deployment]:
        return self.registry.history()


def _fingerprint(data: bytes) -> tuple[str, str]:
    fp = fingerprint(data)
    return fp.pixels_sha, fp.phash_hex
