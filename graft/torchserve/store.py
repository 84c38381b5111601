"""The model store: ``NAME-VERSION.mar`` archives, their names and versions, and which is each model's default."""

from __future__ import annotations

import json
import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.core.errors import ServeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Archive:
    path: Path
    name: str
    version: str



def version_key(version: str) -> tuple[Any, ...]:
    """Natural order: "10" after "9", "1.10" after "1.9"; numbers before words at the same position."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-_+]", version))


def scan_store(store: Path) -> list[Archive]:
    """Every ``.mar`` in the store with the model name and version from its manifest."""
    out = []
    for path in sorted(Path(store).glob("*.mar")):
        try:
            with zipfile.ZipFile(path) as z:
                model = json.loads(z.read("MAR-INF/MANIFEST.json"))["model"]
            out.append(Archive(path, str(model["modelName"]), str(model.get("modelVersion", "1.0"))))
        except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
            log.warning("skipping %s: not a readable model archive (%s)", path.name, e)
    return out


def latest_versions(archives: list[Archive]) -> dict[str, str]:
    latest: dict[str, str] = {}
    for a in archives:
        if a.name not in latest or version_key(a.version) > version_key(latest[a.name]):
            latest[a.name] = a.version
    return latest


def default_versions(archives: list[Archive], pins: dict[str, str]) -> dict[str, str]:
    """Each model's default version: the pinned one where pinned, else its newest."""
    present = {(a.name, a.version) for a in archives}
    if missing := sorted(f"{name}={version}" for name, version in pins.items() if (name, version) not in present):
        raise ServeError(f"pinned default versions not in the model store: {', '.join(missing)}")
    return {**latest_versions(archives), **pins}
