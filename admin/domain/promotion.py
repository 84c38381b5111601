"""Putting a version in service, and keeping the registry and the server in agreement.

The order is what makes a swap safe: export -> deploy beside the champion -> smoke test it by its
explicit version -> set-default on the server -> record the default in the registry -> retire old
versions. Any failure before set-default leaves the champion as it was; a failure to record after
it swaps the server back. After a crash, :meth:`Promoter.reconcile` makes the server's default the
registry's again, so a half-finished promotion cannot survive a restart.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from admin.metrics import AdminMetrics
from admin.rollouts.base import DefaultAware, Rollout, SmokeTestable
from admin.store.registry import Registry
from admin.store.rows import DeployAction, ModelVersion
from graft.core.errors import ArtifactError, ConflictError, GraftError

log = logging.getLogger(__name__)

ExportFn = Callable[[Path, Path, str, str, Sequence[Path]], Path]
PhaseFn = Callable[[str], None]
VetFn = Callable[[ModelVersion], None]  # last word before the switch: raise to keep the champion


def default_export(run_dir: Path, model_store: Path, name: str, version: str, check_images: Sequence[Path]) -> Path:
    """Export as the run's ``model.json`` records (``export.archive``: INT8 included), else with the defaults.

    A retrained candidate holds the champion's record (``training.export_settings.prepare_like``); an
    older version exported again holds its own.
    """
    from training.export import export_run
    from training.export_settings import recorded_settings

    settings = recorded_settings(run_dir)
    if settings is None:
        return export_run(run_dir, model_store, name, version, list(check_images) or None)
    return export_run(
        run_dir, model_store, name, version, list(check_images) or None,
        model_config=settings.model_config, quantize=settings.quantize,
    )  # fmt: skip


class Promoter:
    """Serialises every change of what is served: one swap at a time, whoever asks (job or admin)."""

    def __init__(
        self,
        registry: Registry,
        rollout: Rollout | None,
        metrics: AdminMetrics,
        keep_versions: int,
        export: ExportFn = default_export,
        archive_dir: Path | None = None,
        on_default: Callable[[ModelVersion], None] = lambda _m: None,
    ):
        self.registry = registry
        self.rollout = rollout
        self.metrics = metrics
        self.keep_versions = keep_versions
        self.export = export
        # Retired archives move here, out of the store: a restart loads only what serves or may come back.
        self.archive_dir = archive_dir
        self.on_default = on_default  # told each model put in service (its labels join the label set)
        self.lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.registry.name

    def ensure_mar(self, model: ModelVersion, check_images: Sequence[Path]) -> Path:
        """The version's ``.mar`` in the model store, exported from its run folder when missing."""
        expected = self.registry.model_store / f"{self.name}-{model.version}.mar"
        if expected.is_file():
            return expected
        archived = self.archive_dir / expected.name if self.archive_dir else None
        if archived is not None and archived.is_file():
            shutil.move(archived, expected)  # a rollback target comes back into the store
            self.registry.update(model.version, mar_path=expected)
            log.info("restored %s from %s", expected.name, self.archive_dir)
            return expected
        if model.mar_path and model.mar_path.is_file():
            return model.mar_path
        if model.run_dir is None or not model.run_dir.is_dir():
            raise ArtifactError(f"version {model.version} has no .mar and no run folder to export it from")
        mar = self.export(model.run_dir, self.registry.model_store, self.name, model.version, check_images)
        self.registry.update(model.version, mar_path=mar)
        return mar

    def put_in_service(
        self,
        version: str,
        action: DeployAction,
        smoke_images: Sequence[Path],
        job_id: str | None = None,
        on_phase: PhaseFn | None = None,
        vet: VetFn | None = None,
    ) -> None:
        """Make ``version`` the default, or raise with the champion still the default.

        ``vet`` runs once the version answers by its explicit version (the shadow replay): raising there
        retires it and leaves the champion serving."""
        phase = on_phase or (lambda _p: None)
        with self.lock:
            model = self.registry.get(version)
            previous = self.registry.default_version()
            if previous == version:
                raise ConflictError(f"version {version} is already the default")
            phase("exporting")
            mar = self.ensure_mar(model, smoke_images)
            if self.rollout is not None:
                self._deploy_and_test(model, mar, smoke_images, phase, vet)
                phase("switching")
                self.rollout.set_default(self.name, version)
            try:
                self.registry.record_default(version, action, job_id)
            except Exception:
                if self.rollout is not None and previous is not None:
                    self.rollout.set_default(self.name, previous)  # the server follows the registry, always
                raise
            self.on_default(model)
            self.metrics.promotions.labels(action=action).inc()
            self.metrics.serving_version.set(float(version) if version.isdigit() else -1)
            log.info("version %s is now the default (%s; was %s)", version, action, previous)
            self._retire_old()

    def _deploy_and_test(
        self, model: ModelVersion, mar: Path, images: Sequence[Path], phase: PhaseFn, vet: VetFn | None
    ) -> None:
        assert self.rollout is not None
        version = model.version
        was_deployed = version in self.rollout.versions(self.name)
        try:
            phase("deploying")
            self.rollout.deploy(self.name, version, mar)
            self.registry.update(version, deployed=1)
            if isinstance(self.rollout, SmokeTestable) and images:
                phase("smoke_test")
                self.rollout.smoke_test(self.name, version, images, model.labels)
        except GraftError:
            self.metrics.rollout_failures.inc()
            if not was_deployed:
                self._retire_quietly(version)
            raise
        if vet is not None:
            try:
                vet(model)
            except Exception:  # a refusal, not a failed rollout: the candidate goes, the champion stays
                if not was_deployed:
                    self._retire_quietly(version)
                raise

    def _retire_quietly(self, version: str) -> None:
        assert self.rollout is not None
        try:
            self.rollout.retire(self.name, version)
            self.registry.update(version, deployed=0)
        except GraftError as e:
            log.warning("could not retire version %s: %s", version, e)
            return
        self._archive(version)

    def _archive(self, version: str) -> None:
        """Move a retired version's archive out of the store (it stays restorable for a rollback)."""
        mar = self.registry.model_store / f"{self.name}-{version}.mar"
        if self.archive_dir is None or not mar.is_file():
            return
        self.archive_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(mar, self.archive_dir / mar.name)
        self.registry.update(version, mar_path=self.archive_dir / mar.name)
        log.info("moved %s to %s", mar.name, self.archive_dir)

    def _retire_old(self) -> None:
        """Unregister known versions outside the keep set; a failure here is logged, never fatal."""
        if self.rollout is None:
            return
        keep = set(self.registry.keep_set(self.keep_versions))
        known = {m.version for m in self.registry.all()}
        try:
            served = self.rollout.versions(self.name)
        except GraftError as e:
            log.warning("could not list served versions to retire old ones: %s", e)
            return
        for v in served:
            if v in known and v not in keep:
                self._retire_quietly(v)

    def reconcile(self) -> None:
        """Make the server's default the registry's (after a crash or a server restart)."""
        wanted = self.registry.default_version()
        if self.rollout is None or wanted is None:
            return
        with self.lock:
            served = self.rollout.versions(self.name)
            for m in self.registry.all():
                self.registry.update(m.version, deployed=int(m.version in served))
            if wanted not in served:
                model = self.registry.get(wanted)
                self.rollout.deploy(self.name, wanted, self.ensure_mar(model, []))
                self.registry.update(wanted, deployed=1)
            # Without a way to ask the server its default, trust it unless we just deployed the champion.
            if isinstance(self.rollout, DefaultAware):
                current = self.rollout.default_version(self.name)
            else:
                current = wanted if wanted in served else None
            if current != wanted:
                self.rollout.set_default(self.name, wanted)
                log.warning("reconciled: the server's default was %s, the registry's is %s", current, wanted)
            self.metrics.serving_version.set(float(wanted) if wanted.isdigit() else -1)
            self._retire_old()
