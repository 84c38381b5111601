"""Adoption: which model the admin manages, its champion when the registry is empty, and its base data.

Decided once and remembered in the registry file (``meta``), so a restart manages the same model:

* the model name is ``--model-name`` when given, else the one model name in the store (several: refused,
  naming them); a name the store does not hold, while it holds others, is refused too;
* the champion is ``--initial-run`` when given, else the newest archive of that name in the store, whose
  ``model.json`` and weights are unpacked into ``STATE_DIR/models/NAME-VERSION`` (the gate needs them);
* the base data (replayed in every retraining, its holdout judging every candidate) is ``--base-data`` /
  ``--base-manifest`` when given, else the dataset the champion's card records (``lineage.dataset_path``)
  while it is still readable; when it is not, only collected samples are used, and the service says so.
"""

from __future__ import annotations

import logging
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from admin.settings import AdminSettings
from admin.store.db import Database
from admin.store.registry import Registry
from admin.store.rows import ModelVersion
from graft.core.artifact import MODEL_JSON, ONNX_FILE, name_from_folder, read_card
from graft.core.errors import ArtifactError, ConfigError
from graft.core.images import IMAGE_SUFFIXES
from graft.torchserve.store import Archive, scan_store, version_key

log = logging.getLogger(__name__)

_NAME_KEY, _BASE_DATA_KEY, _BASE_MANIFEST_KEY = "model_name", "base_data", "base_manifest"


@dataclass(frozen=True)
class BaseData:
    """Where the first model's data is: an image folder or a manifest (or neither), and why."""

    data: Path | None = None
    manifest: Path | None = None
    warnings: tuple[str, ...] = ()


@dataclass
class Adopted:
    """What the service manages; ``model_name`` None while nothing is known (empty store, no initial run)."""

    model_name: str | None
    base: BaseData = field(default_factory=BaseData)


def store_names(store: Path) -> list[str]:
    return sorted({a.name for a in scan_store(store)}) if Path(store).is_dir() else []


def resolve_model_name(settings: AdminSettings, db: Database) -> str | None:
    """The model this state folder manages (see the module docstring); ConfigError when it is ambiguous."""
    remembered, given = db.get_meta(_NAME_KEY), settings.model_name
    names = store_names(settings.model_store)
    if remembered is not None:
        if given is not None and given != remembered:
            raise ConfigError(
                f"the state folder {settings.state_dir} manages model {remembered!r}, not {given!r}: start with "
                f"--model-name {remembered}, or give another --admin-state-dir for another model"
            )
        return remembered
    if given is not None:
        if names and given not in names and settings.initial_run is None:
            raise ConfigError(
                f"model {given!r} is not in the model store {settings.model_store}, which holds "
                f"{', '.join(names)}: pass --model-name with one of those, or export {given!r} into the store first"
            )
        return given
    if len(names) > 1:
        raise ConfigError(
            f"the model store {settings.model_store} holds several models ({', '.join(names)}): "
            "say which one the admin manages with --model-name (or GRAFT_MODEL_NAME)"
        )
    if names:
        return names[0]
    if settings.initial_run is not None:
        return name_from_folder(settings.initial_run)
    return None


def remember_name(db: Database, name: str) -> None:
    if db.get_meta(_NAME_KEY) is None:
        db.set_meta(_NAME_KEY, name)


def newest_archive(store: Path, name: str) -> Archive | None:
    archives = [a for a in scan_store(store) if a.name == name] if Path(store).is_dir() else []
    return max(archives, key=lambda a: version_key(a.version), default=None)


def unpack_card(archive: Archive, dest: Path) -> Path:
    """The run-folder part of an archive (model.json, weights, ONNX) unpacked into ``dest``."""
    try:
        with zipfile.ZipFile(archive.path) as z:
            names = set(z.namelist())
            if MODEL_JSON not in names:
                raise ArtifactError(f"{archive.path} has no {MODEL_JSON}: it was not exported by graft")
            dest.mkdir(parents=True, exist_ok=True)
            card = z.read(MODEL_JSON)
            (dest / MODEL_JSON).write_bytes(card)
            weights = read_card(dest).weights_file
            for member in (weights, ONNX_FILE):
                if member in names:
                    (dest / member).write_bytes(z.read(member))
    except (OSError, zipfile.BadZipFile, KeyError) as e:
        raise ArtifactError(f"cannot unpack {archive.path}: {e}") from e
    return dest


def _readable(path: Path) -> bool:
    if path.is_file():
        return True
    return path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*") if p.is_file())


def resolve_base(settings: AdminSettings, db: Database, champion_run: Path | None) -> BaseData:
    """The settings' base data, else the one remembered, else the champion's recorded dataset."""
    if settings.base_data is not None or settings.base_manifest is not None:
        return BaseData(settings.base_data, settings.base_manifest)
    data, manifest = db.get_meta(_BASE_DATA_KEY), db.get_meta(_BASE_MANIFEST_KEY)
    recorded: Path | None = Path(data or manifest or "") if (data or manifest) else None
    if recorded is None and champion_run is not None:
        try:
            source = read_card(champion_run).lineage.dataset_path
        except ArtifactError:
            source = None
        recorded = Path(source) if source else None
    if recorded is None:
        why = "the model in service records no dataset"
        return BaseData(warnings=(f"no base data: {why}; retraining uses the collected samples only",))
    if not _readable(recorded):
        why = f"the base data {recorded} recorded by the model in service is not readable"
        return BaseData(warnings=(f"{why}: retraining uses the collected samples only (give --base-data)",))
    if recorded.is_file():
        db.set_meta(_BASE_MANIFEST_KEY, str(recorded))
        return BaseData(manifest=recorded)
    db.set_meta(_BASE_DATA_KEY, str(recorded))
    return BaseData(data=recorded)


def import_run(registry: Registry, run_dir: Path, version: str, mar: Path | None = None) -> ModelVersion:
    """Register an existing run folder (a model trained by hand, or unpacked from its archive) as the default."""
    card = read_card(run_dir)  # ArtifactError when it is not a run folder
    mar = mar or registry.model_store / f"{registry.name}-{version}.mar"
    registry.create(
        version,
        status="accepted",
        source="import",
        run_dir=Path(run_dir).resolve(),
        mar_path=mar.resolve() if mar.is_file() else None,
        labels=card.labels,
        recipe={"backbone": card.backbone, **card.recipe},
        lineage=card.lineage.model_dump(mode="json"),
        metrics={"training": card.metrics},
        dataset_digest=card.lineage.dataset_digest,
        num_train=card.lineage.num_train,
        num_holdout=card.lineage.num_val,
    )
    registry.record_default(version, "import")
    log.info("imported %s as %s version %s (the default)", run_dir, registry.name, version)
    return registry.get(version)


def adopt(settings: AdminSettings, db: Database, registry: Registry) -> str | None:
    """Decide the model name and, when the registry is empty, import its champion; None while there is none.

    ConfigError when the name is ambiguous or not in the store (the service must not start on a guess).
    """
    name = resolve_model_name(settings, db)
    if name is None:
        return None
    registry.model_name = name
    if registry.is_empty():
        if settings.initial_run is not None:
            import_run(registry, settings.initial_run, settings.initial_version)
        else:
            archive = newest_archive(settings.model_store, name)
            if archive is None:
                return None
            run = unpack_card(archive, settings.state_dir / "models" / f"{name}-{archive.version}")
            import_run(registry, run, archive.version, archive.path)
    remember_name(db, name)
    return name


@dataclass(frozen=True)
class ServingPlan:
    """What ``graft serve`` loads for the managed model: its default and the versions a rollback would reach."""

    model_name: str
    default: str
    keep: list[str]
    registered: list[str]  # every version the registry knows (others in the store are left alone)


def serving_plan(settings: AdminSettings, adopt_first: bool) -> ServingPlan | None:
    """The plan from the registry file (adopting first when asked: the admin will run beside TorchServe).

    Without ``adopt_first`` a missing registry file is no plan (None), and nothing is written.
    """
    if not adopt_first and not settings.db_path.is_file():
        return None
    db = Database(settings.db_path)
    try:
        registry = Registry(db, settings.model_store, None)
        name = adopt(settings, db, registry) if adopt_first else resolve_model_name(settings, db)
        registry.model_name = name
        default = registry.default_version()
        if name is None or default is None:
            return None
        registered = [m.version for m in registry.all()]
        return ServingPlan(name, default, registry.keep_set(settings.keep_versions), registered)
    finally:
        db.close()


def arrange_store(settings: AdminSettings, plan: ServingPlan) -> list[str]:
    """Put the plan's archives in the store (back from the archive folder if needed) and move the managed
    model's other registered versions out to the archive folder. Returns the plan versions still missing."""
    store, archive = Path(settings.model_store), settings.archive_path
    missing = []
    for version in plan.keep:
        mar = store / f"{plan.model_name}-{version}.mar"
        kept = archive / mar.name
        if not mar.is_file() and kept.is_file():
            store.mkdir(parents=True, exist_ok=True)
            shutil.move(kept, mar)
            log.info("restored %s from %s: version %s may serve", mar.name, archive, version)
        if not mar.is_file():
            missing.append(version)
    for a in scan_store(store) if store.is_dir() else []:
        if a.name == plan.model_name and a.version in plan.registered and a.version not in plan.keep:
            archive.mkdir(parents=True, exist_ok=True)
            shutil.move(a.path, archive / a.path.name)
            log.info("moved %s to %s: version %s neither serves nor is a rollback target", a.path.name, archive,
                     a.version)  # fmt: skip
    return missing
