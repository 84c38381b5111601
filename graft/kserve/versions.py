"""Which archive versions the runtime serves, and which one answers each model's plain name.

Versions are separate KServe models: ``NAME-vVERSION`` is one version, and ``NAME`` (the alias) is a
second model object sharing the default version's engine and batcher. KServe's Python server has no
version field of its own (``/v2/models/NAME/versions/V/infer`` answers "not supported"), so the guard
rewrites that path to ``NAME-vV`` and OIP clients can use either spelling. Promotion moves the alias in
one dictionary update; requests already queued on the old version finish there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.core.errors import ArtifactError, GraftError
from graft.kserve.batcher import Batcher, drain
from graft.kserve.engine import ArchiveEngine, unpack
from graft.torchserve.store import Archive, default_versions, scan_store, version_key

log = logging.getLogger(__name__)


class VersionNotFoundError(GraftError):
    status_code = 404


class DefaultVersionConflictError(GraftError):
    status_code = 409


def version_model_name(name: str, version: str) -> str:
    return f"{name}-v{version}"


@dataclass
class Loaded:
    engine: ArchiveEngine
    batcher: Batcher
    archive: Path


# (KServe model name, engine, batcher) -> a registered model object
ModelFactory = Callable[[str, ArchiveEngine, Batcher], Any]


class VersionSet:
    """The loaded versions, the defaults, and the KServe model repository they are registered in."""

    def __init__(self, store: Path, unpack_root: Path, repository: Any, make_model: ModelFactory,
                 queue_size: int = 100) -> None:  # fmt: skip
        self.store = Path(store)
        self.unpack_root = Path(unpack_root)
        self.repository = repository
        self.make_model = make_model
        self.queue_size = queue_size
        self.loaded: dict[str, dict[str, Loaded]] = {}
        self.defaults: dict[str, str] = {}
        self._lock = asyncio.Lock()

    # ---------------------------------------------------------------- start-up (synchronous)

    def load_store(self, pins: dict[str, str], only: dict[str, list[str]]) -> None:
        """Every archive of the store (only the listed versions where ``only`` names the model), defaults set."""
        archives = [a for a in scan_store(self.store) if a.name not in only or a.version in only[a.name]]
        if not archives:
            raise ArtifactError(f"no model archive to serve in {self.store}: export one with graft export")
        for a in archives:
            self._load(a)
        for name, version in default_versions(archives, pins).items():
            self._point(name, version)

    def load_folder(self, folder: Path) -> None:
        """One unpacked archive folder (or ``.mar``), served as its own default."""
        engine = ArchiveEngine(unpack(folder, self.unpack_root))
        self._register(engine, Path(folder))
        self._point(engine.name, engine.version)

    def _find(self, name: str, version: str) -> Archive:
        for a in scan_store(self.store):
            if a.name == name and a.version == version:
                return a
        raise VersionNotFoundError(f"no archive of {name} version {version} in {self.store}: export it there first")

    def _load(self, archive: Archive) -> None:
        engine = ArchiveEngine(unpack(archive.path, self.unpack_root))
        if (engine.name, engine.version) != (archive.name, archive.version):
            raise ArtifactError(f"{archive.path.name} unpacked as {engine.name} {engine.version}: export it again")
        self._register(engine, archive.path)

    def _register(self, engine: ArchiveEngine, archive: Path) -> None:
        batcher = Batcher(engine.predict, engine.max_batch, engine.max_delay_s, self.queue_size)
        self.loaded.setdefault(engine.name, {})[engine.version] = Loaded(engine, batcher, archive)
        self.repository.update(self.make_model(version_model_name(engine.name, engine.version), engine, batcher))
        log.info("loaded %s version %s (batch <= %d, delay %.0f ms)", engine.name, engine.version, engine.max_batch,
                 engine.max_delay_s * 1000)  # fmt: skip

    def _point(self, name: str, version: str) -> None:
        loaded = self.loaded.get(name, {}).get(version)
        if loaded is None:
            raise VersionNotFoundError(f"{name} version {version} is not loaded: load it first")
        self.repository.update(self.make_model(name, loaded.engine, loaded.batcher))
        self.defaults[name] = version
        log.info("%s answers with version %s", name, version)

    # ---------------------------------------------------------------- management (while serving)

    def describe(self, name: str) -> dict[str, Any]:
        if name not in self.loaded:
            raise VersionNotFoundError(f"no model named {name} is served here")
        return {"name": name, "default": self.defaults.get(name),
                "versions": sorted(self.loaded[name], key=version_key)}  # fmt: skip

    def describe_all(self) -> list[dict[str, Any]]:
        return [self.describe(n) for n in sorted(self.loaded)]

    async def load(self, name: str, version: str) -> bool:
        """Load ``version`` from the store beside the others (not the default). False when already loaded."""
        async with self._lock:
            if version in self.loaded.get(name, {}):
                return False
            archive = self._find(name, version)
            await asyncio.to_thread(self._load, archive)
            if name not in self.defaults:
                self._point(name, version)
            return True

    async def set_default(self, name: str, version: str) -> None:
        async with self._lock:
            self._point(name, version)

    async def retire(self, name: str, version: str, drain_timeout_s: float = 60.0) -> bool:
        """Stop serving ``version`` (never the default); requests already queued on it finish first."""
        async with self._lock:
            if self.defaults.get(name) == version:
                raise DefaultVersionConflictError(f"{name} version {version} is the default: promote another first")
            loaded = self.loaded.get(name, {}).pop(version, None)
            if loaded is None:
                return False
            self.repository.unload(version_model_name(name, version))
        if not await drain(loaded.batcher, drain_timeout_s):
            log.warning("%s version %s still busy after %.0fs; stopping it anyway", name, version, drain_timeout_s)
        loaded.batcher.close()
        log.info("retired %s version %s", name, version)
        return True
