"""A fair holdout: the images a model trained on or was selected with never grade it.

A model "saw" every image of the data it was trained from: its training split, and its validation split,
which chose its best epoch and its recipe depth (``--recipe auto``). ``model.json`` records where that data
came from (``lineage.dataset_path``: a folder or a manifest); a warm start also inherits everything its
parent saw (``lineage.parent_model``). The gate judges a candidate and the champion only on holdout images
neither saw. This matters for the first model above all: its validation split becomes holdout in the
admin (it stays out of every retraining), but it graded the champion on its own selection set, which can
only flatter it; from now on those images grade only later models, which never saw them.

Identity is the resolved file path: the admin's snapshots list base images and stored samples by path,
exactly as training read them. Nothing is decoded here: listing a folder or reading a manifest is enough.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from graft.core.artifact import read_card
from graft.core.errors import GraftError
from graft.core.images import IMAGE_SUFFIXES
from graft.core.manifest import Item, read_manifest

log = logging.getLogger(__name__)

_VAL_DIRS = ("val", "valid", "validation")
_MAX_PARENTS = 32  # warm starts chained further back than this are not followed (a cycle guard too)


@dataclass(frozen=True)
class Seen:
    """The images one model trained or was selected on; ``known`` False when its data cannot be read."""

    paths: frozenset[Path]
    known: bool
    sources: tuple[str, ...] = ()


def _folder_images(root: Path, validation: bool = True) -> set[Path]:
    """Every image training could have read from ``root`` (``train|val/<label>/`` or ``<label>/``); without
    ``validation``, a separate ``val/`` folder's images are not counted."""
    val = next((root / n for n in _VAL_DIRS if (root / n).is_dir()), None)
    split = (root / "train").is_dir() and val is not None
    tops = ([root / "train", val] if validation else [root / "train"]) if split else [root]
    out: set[Path] = set()
    for top in tops:
        assert top is not None
        for cdir in (p for p in top.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = (f for f in cdir.rglob("*") if f.is_file() and not f.name.startswith("."))
            out.update(f.resolve() for f in files if f.suffix.lower() in IMAGE_SUFFIXES)
    return out


def _dataset_images(source: str, validation: bool = True) -> set[Path] | None:
    path = Path(source)
    try:
        if path.is_file():  # a manifest: its train items (validation is carved out of them) and val items
            items, _ = read_manifest(path)
            skip = ("holdout",) if validation else ("holdout", "val")
            return {i.path.resolve() for i in items if i.split not in skip}
        if path.is_dir():
            return _folder_images(path, validation)
    except (OSError, GraftError) as e:
        log.warning("cannot list the data at %s: %s", path, e)
    return None


def _parent_dir(parent_model: str | None) -> Path | None:
    """``lineage.parent_model`` is "<run folder> (<weights digest>)" for a warm start."""
    if not parent_model:
        return None
    return Path(parent_model.rsplit(" (", 1)[0])


def seen_by(run_dir: Path | None, validation: bool = True) -> Seen:
    """What the model of ``run_dir`` (and every model it was warm-started from) trained or selected on; without
    ``validation``, what it trained on (a separate validation split's images are not counted)."""
    paths: set[Path] = set()
    sources: list[str] = []
    known = run_dir is not None
    current: Path | None = run_dir
    visited: set[Path] = set()
    while current is not None and len(visited) < _MAX_PARENTS and current not in visited:
        visited.add(current)
        try:
            lineage = read_card(current).lineage
        except (OSError, GraftError, ValueError) as e:
            log.warning("cannot read the model card of %s: %s", current, e)
            return Seen(frozenset(paths), False, tuple(sources))
        images = _dataset_images(lineage.dataset_path, validation) if lineage.dataset_path else None
        if images is None:
            known = False
        else:
            paths |= images
            sources.append(str(lineage.dataset_path))
        current = _parent_dir(lineage.parent_model)
    return Seen(frozenset(paths), known, tuple(sources))


@dataclass(frozen=True)
class FairHoldout:
    items: list[Item]
    left_out: int  # holdout items one of the models saw
    unknown: list[str]  # which model's data could not be listed (its images could not be left out)


def fair_holdout(holdout: Sequence[Item], seen: Iterable[tuple[str, Seen]]) -> FairHoldout:
    """The holdout items none of the named models saw."""
    excluded: set[Path] = set()
    unknown = []
    for name, s in seen:
        excluded |= s.paths
        if not s.known:
            unknown.append(name)
    items = [i for i in holdout if i.path.resolve() not in excluded]
    return FairHoldout(items, len(holdout) - len(items), unknown)
