"""What ``graft serve`` puts in service, decided before TorchServe loads anything.

* ``graft serve RUN_DIR``: the run folder is exported (ONNX + ``.mar``) into ``STATE_DIR/model-store`` the
  first time, as ``NAME-1`` (NAME: ``--model-name``, else the folder's name), and the admin adopts it.
* The default version and the versions loaded come from the admin's registry file: the version in service
  and its rollback targets (``GRAFT_KEEP_VERSIONS``), so a restart answers with the version in service from
  its first request. Other registered versions of the model move to the archive folder.
* ``--no-admin``: ``GRAFT_DEFAULT_VERSIONS`` when set (the Kubernetes pods), else the registry file when
  there is one, else each model's newest version; the log says which.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from admin.domain.adoption import ServingPlan, arrange_store, serving_plan, store_names
from admin.settings import AdminSettings
from admin.store.db import Database
from admin.store.registry import Registry
from graft.core.artifact import name_from_folder, read_card
from graft.core.errors import ConfigError
from graft.torchserve.pins import DEFAULTS_ENV, parse_defaults

log = logging.getLogger(__name__)


@dataclass
class Served:
    """The store to serve, the pinned defaults, the versions to load, and the admin's settings to match."""

    store: Path
    pins: dict[str, str] = field(default_factory=dict)
    only: dict[str, list[str]] = field(default_factory=dict)
    settings: AdminSettings | None = None


def _store_for(run_dir: Path | None, model_store: str | None, settings: AdminSettings) -> Path:
    if model_store:
        return Path(model_store).resolve()
    if run_dir is not None:
        return (settings.state_dir / "model-store").resolve()
    raise ConfigError("give a run folder (graft serve RUN_DIR) or a model store (--model-store DIR)")


def _export_first(run_dir: Path, store: Path, name: str, settings: AdminSettings) -> None:
    """Export the run folder as ``NAME-1`` unless the store or the registry already has this model."""
    from training.export import export_run

    if any(store.glob(f"{name}-*.mar")) or (settings.db_path.is_file() and _registry_has_models(settings)):
        log.info("%s is already in service from %s; %s is only used on the first start", name, store, run_dir)
        return
    log.info("exporting %s into %s as %s version 1 (ONNX + .mar)", run_dir, store, name)
    export_run(run_dir, store, name, "1")


def _registry_has_models(settings: AdminSettings) -> bool:
    db = Database(settings.db_path)
    try:
        return not Registry(db, settings.model_store, None).is_empty()
    finally:
        db.close()


def _with_plan(served: Served, plan: ServingPlan | None, source: str) -> Served:
    if plan is None:
        return served
    served.pins[plan.model_name] = plan.default
    served.only[plan.model_name] = plan.keep
    log.info("%s: %s version %s is the default; loading %s", source, plan.model_name, plan.default,
             ", ".join(f"v{v}" for v in plan.keep))  # fmt: skip
    return served


def plan_with_admin(run_dir: Path | None, model_store: str | None, settings: AdminSettings) -> Served:
    """Export (first start), adopt, arrange the store; the admin's settings pointed at that store."""
    store = _store_for(run_dir, model_store, settings)
    update: dict[str, object] = {"model_store": store}
    if run_dir is not None:
        read_card(run_dir)  # ArtifactError now, not after minutes: is it a run folder?
        name = settings.model_name or name_from_folder(run_dir)
        _export_first(run_dir, store, name, settings)
        update |= {"model_name": name}
        if settings.initial_run is None:
            update["initial_run"] = run_dir.resolve()
    settings = settings.model_copy(update=update)
    plan = serving_plan(settings, adopt_first=True)
    served = _with_plan(Served(store, settings=settings), plan, f"registry {settings.db_path}")
    if plan is not None:
        if missing := arrange_store(settings, plan):
            raise ConfigError(
                f"{plan.model_name} version(s) {', '.join(missing)} are in the registry's keep set but their "
                f"archives are in neither {store} nor {settings.archive_path}: export them again "
                f"(graft export RUN_DIR --name {plan.model_name} --version V --model-store {store})"
            )
    elif store_names(store):
        log.warning("the admin manages no model yet; TorchServe serves every archive in %s", store)
    return served


def plan_without_admin(run_dir: Path | None, model_store: str | None, settings: AdminSettings) -> Served:
    """Pins from GRAFT_DEFAULT_VERSIONS, else the registry file, else the newest; nothing is moved."""
    store = _store_for(run_dir, model_store, settings)
    if run_dir is not None:
        read_card(run_dir)
        _export_first(run_dir, store, settings.model_name or name_from_folder(run_dir), settings)
    served = Served(store)
    if pins := parse_defaults(os.environ.get(DEFAULTS_ENV)):
        served.pins = pins
        log.info("default versions pinned by %s: %s", DEFAULTS_ENV, ", ".join(f"{n} v{v}" for n, v in pins.items()))
        return served
    plan = serving_plan(settings.model_copy(update={"model_store": store}), adopt_first=False)
    if plan is None:
        log.info("no admin registry at %s: each model's newest version in %s is the default", settings.db_path, store)
        return served
    return _with_plan(served, plan, f"registry {settings.db_path}")
