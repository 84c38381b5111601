"""Where a folder's images are, and what the user probably meant when the folder is not laid out for graft.

Two layouts: ``DIR/<label>/*`` (split by seed) or ``DIR/train/<label>/*`` + ``DIR/val/<label>/*``. A folder of
loose images, a folder one level above the classes, or ``train``/``test`` folders read as two classes all
train nothing or the wrong thing: :func:`explain` names the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from graft.core.errors import DatasetError
from graft.core.images import IMAGE_SUFFIXES
from graft.core.manifest import Item, Split

VAL_DIR_NAMES = ("val", "valid", "validation")
# Folder names that mean a split, not a class.
SPLIT_NAMES = frozenset({"train", "training", "test", "testing", *VAL_DIR_NAMES})
_EXPECTED = "DIR/<label>/*.jpg (one folder per label) or DIR/train/<label>/ with DIR/val/<label>/"


@dataclass
class Layout:
    root: Path
    split_dirs: bool  # DIR/train + DIR/val; else one folder per class, split by seed
    files: list[Item]  # every visible file inside a class folder, with its label and split
    loose: list[Path] = field(default_factory=list)  # image files beside the class folders, never read
    unread_dirs: list[Path] = field(default_factory=list)  # folders beside train/val (test/...), never read
    # label -> the subfolders of its class folder that hold files (flat layout): one level too high?
    nested: dict[str, set[str]] = field(default_factory=dict)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _loose_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _files(folder: Path, split: Split, nested: dict[str, set[str]]) -> list[Item]:
    out: list[Item] = []
    for cdir in _class_dirs(folder):
        for f in sorted(cdir.rglob("*")):
            parts = f.relative_to(cdir).parts
            if f.is_file() and all(part[:1] != "." for part in parts):
                out.append(Item(f.resolve(), cdir.name, split))
                if len(parts) > 1:
                    nested.setdefault(cdir.name, set()).add(parts[0])
    return out


def find_layout(root: Path) -> Layout:
    """The files of ``root`` with their labels and splits; DatasetError when ``root`` is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {str(root)!r} does not exist: give a folder laid out as {_EXPECTED}")
    train_dir = root / "train"
    val_dir = next((root / n for n in VAL_DIR_NAMES if (root / n).is_dir()), None)
    nested: dict[str, set[str]] = {}
    if not (train_dir.is_dir() and val_dir is not None):
        return Layout(root, False, _files(root, "train", nested), _loose_images(root), nested=nested)
    loose = _loose_images(root) + _loose_images(train_dir) + _loose_images(val_dir)
    others = [d for d in _class_dirs(root) if d not in (train_dir, val_dir)]
    files = _files(train_dir, "train", {}) + _files(val_dir, "val", {})
    return Layout(root, True, files, loose, others)


def _subfolders(layout: Layout, label: str) -> list[str]:
    """The subfolders of a class folder that hold its files (empty when they all lie in it directly)."""
    return sorted(layout.nested.get(label, ()))


def explain(layout: Layout, labels: list[str]) -> str | None:
    """Why the folder's ``labels`` (the classes with usable images) cannot train, and the fix; None if they can."""
    root = layout.root
    if not labels:
        if layout.loose:
            return (
                f"{root} holds {len(layout.loose)} image(s) directly but no class folders: graft reads "
                f"{_EXPECTED}. Move the images into one folder per label, e.g. {root}/cats/, {root}/dogs/"
            )
        return f"{root} has no readable image in a class folder: lay it out as {_EXPECTED}"
    split_like = [label for label in labels if label.lower() in SPLIT_NAMES]
    if not layout.split_dirs and split_like and all(_subfolders(layout, label) for label in split_like):
        train = next((x for x in split_like if x.lower() in ("train", "training")), split_like[0])
        others = [x for x in split_like if x != train]
        rename = f"rename {'/'.join(others)} to val" if others else f"add {root}/val/<label>/ folders"
        return (
            f"{root}: the folders {', '.join(sorted(split_like, key=lambda x: x != train))} look like splits, not "
            f"classes: graft reads {root}/train/<label>/ with {root}/val/<label>/ (or valid/, validation/); "
            f"{rename}, or pass --data {root / train} to split it by seed"
        )
    if len(labels) == 1:
        only = labels[0]
        subs = _subfolders(layout, only)
        if len(subs) >= 2:
            return (
                f"found 1 class ('{only}') under {root}, whose subfolders ({', '.join(subs[:6])}) look like the "
                f"classes: pass --data {root / only}"
            )
        return (
            f"found 1 class ('{only}') with readable images under {root}; need at least 2: add a folder per "
            f"label beside it ({_EXPECTED})"
        )
    return None
