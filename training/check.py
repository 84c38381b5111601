"""``graft check DATA``: what is wrong with a data set, before a training run finds out.

Each finding says what is wrong, where, and what to do. Severity: ``error`` is what ``graft train`` refuses
(it runs the same checks, all but the pairwise near-duplicate search), ``warning`` trains but misleads
(skipped files, a copy in train and val, a class too small to measure), ``info`` is worth knowing (images
with transparency, composited on the model's background).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from graft.core.manifest import Item
from graft.core.preprocessing import WHITE
from training.data import Collected, collect_folder, collect_manifest
from training.duplicates import Group, exact_duplicates, near_duplicates
from training.labels import look_alike, untidy
from training.layout import explain

Severity = Literal["error", "warning", "info"]

# Fewer training images than this per class: it trains, but not reliably.
MIN_TRAIN_IMAGES = 5
# Largest over smallest class (training images) from which the imbalance is worth a warning.
IMBALANCE_RATIO = 10
# Images smaller than this on a side are upscaled several times to the model's input.
SMALL_SIDE = 32
# Wider or taller than this, the centre crop keeps less than a third of the picture.
WIDE_ASPECT = 3.0
# Modes decoded without surprise; others (CMYK, 16-bit, 1-bit...) are converted and may change.
PLAIN_MODES = frozenset({"RGB", "RGBA", "L", "LA", "P", "PA"})


@dataclass
class Finding:
    code: str
    severity: Severity
    message: str  # what is wrong and what to do
    details: list[dict[str, Any]] = field(default_factory=list)  # the files or labels concerned

    def summary(self, examples: int = 3) -> str:
        """The message with the first few files concerned (a log line; the report lists them all)."""
        paths = [str(d["path"]) if "path" in d else "  =  ".join(d["paths"]) for d in self.details
                 if "path" in d or "paths" in d]  # fmt: skip
        if not paths:
            return self.message
        more = f", and {len(paths) - examples} more" if len(paths) > examples else ""
        return f"{self.message} ({'; '.join(paths[:examples])}{more})"


@dataclass
class CheckReport:
    source: str
    layout: str
    images: int
    skipped: int
    classes: dict[str, dict[str, int]]  # label -> {"train": n, "val": n}
    formats: dict[str, int]
    modes: dict[str, int]
    findings: list[Finding]
    seconds: float = 0.0

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    def as_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body.update(errors=self.count("error"), warnings=self.count("warning"), ok=self.count("error") == 0)
        return body


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _is(n: int) -> str:
    return "is" if n == 1 else "are"


def skipped_findings(c: Collected) -> list[Finding]:
    if not c.skipped:
        return []
    return [Finding(
        "unreadable", "warning",
        f"{_plural(len(c.skipped), 'file')} cannot be read as an image and {_is(len(c.skipped))} "
        "skipped by graft train: re-export or remove them (each reason below)",
        [s.as_dict() for s in c.skipped],
    )]  # fmt: skip


def layout_findings(c: Collected) -> list[Finding]:
    labels = sorted({i.label for i in c.items})
    layout = c.layout
    if layout is None:
        return [] if len(labels) >= 2 else [Finding(
            "layout", "error", f"{c.source}: found {len(labels)} class(es) with readable images; need at least 2"
        )]  # fmt: skip
    out: list[Finding] = []
    problem = explain(layout, labels)
    if problem is not None:
        out.append(Finding("layout", "error", problem))
    if layout.loose and labels:
        out.append(Finding(
            "loose_images", "warning",
            f"{_plural(len(layout.loose), 'image')} outside any class folder {_is(len(layout.loose))} "
            "not read: move them into DIR/<label>/ or remove them",
            [{"path": str(p)} for p in layout.loose],
        ))  # fmt: skip
    if layout.unread_dirs:
        names = ", ".join(p.name for p in layout.unread_dirs)
        out.append(Finding("unread_folders", "info", f"graft reads train/ and val/ only; not read: {names}",
                           [{"path": str(p)} for p in layout.unread_dirs]))  # fmt: skip
    empty = sorted({i.label for i in layout.files} - set(labels))
    if empty:
        out.append(Finding(
            "empty_class", "warning",
            f"class folder(s) {', '.join(map(repr, empty))} hold no readable image: the class is left out; "
            "add images or remove the folder", [{"label": label} for label in empty],
        ))  # fmt: skip
    return out


def class_counts(items: Sequence[Item]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for i in items:
        row = counts.setdefault(i.label, {"train": 0, "val": 0})
        row[i.split] = row.get(i.split, 0) + 1
    return dict(sorted(counts.items()))


def size_findings(c: Collected) -> list[Finding]:
    """Classes too small to train or to validate, no validation split at all, heavy imbalance."""
    counts = class_counts(c.items)
    if len(counts) < 2:
        return []  # the layout finding says why
    out: list[Finding] = []
    no_train = [label for label, n in counts.items() if n["train"] == 0]
    if no_train:
        out.append(Finding(
            "no_train_images", "error",
            f"class(es) {', '.join(map(repr, no_train))} have validation images but no training image: the model "
            "cannot learn them; add training images (DIR/train/<label>/) or remove their validation folder",
            [{"label": label, **counts[label]} for label in no_train],
        ))  # fmt: skip
    if not any(n["val"] for n in counts.values()):
        out.append(Finding("no_val_images", "error", "no validation image: add DIR/val/<label>/ folders, or put "
                           "every image in DIR/<label>/ to have a share split off by seed"))  # fmt: skip
    else:
        out += _small_classes(counts)
    return out + _imbalance(counts)


def _small_classes(counts: dict[str, dict[str, int]]) -> list[Finding]:
    out: list[Finding] = []
    no_val = [label for label, n in counts.items() if n["val"] == 0 and n["train"] > 0]
    if no_val:
        out.append(Finding(
            "no_val_for_class", "warning",
            f"class(es) {', '.join(map(repr, no_val))} have no validation image: their accuracy goes unmeasured; "
            "add images (a class split by seed needs at least 2)",
            [{"label": label, **counts[label]} for label in no_val],
        ))  # fmt: skip
    few = [label for label, n in counts.items() if 0 < n["train"] < MIN_TRAIN_IMAGES]
    if few:
        out.append(Finding(
            "small_class", "warning",
            f"class(es) {', '.join(map(repr, few))} have fewer than {MIN_TRAIN_IMAGES} training images: too few to "
            "learn reliably; add images", [{"label": label, **counts[label]} for label in few],
        ))  # fmt: skip
    return out


def _imbalance(counts: dict[str, dict[str, int]]) -> list[Finding]:
    trained = {label: n["train"] for label, n in counts.items() if n["train"] > 0}
    if len(trained) < 2:
        return []
    big, small = max(trained, key=trained.__getitem__), min(trained, key=trained.__getitem__)
    ratio = trained[big] / trained[small]
    if ratio < IMBALANCE_RATIO:
        return []
    return [Finding(
        "imbalance", "warning",
        f"classes are imbalanced: '{big}' has {trained[big]} training images, '{small}' {trained[small]} "
        f"({ratio:.0f}:1); training weights the loss by class (--balance loss, the default), but few images of a "
        "class stay few: add images of the small classes, or try --balance sampler",
        [{"label": label, "train": n} for label, n in sorted(trained.items(), key=lambda kv: kv[1])],
    )]  # fmt: skip


def label_findings(labels: list[str]) -> list[Finding]:
    out: list[Finding] = []
    pairs = look_alike(labels)
    if pairs:
        out.append(Finding(
            "label_lookalike", "warning",
            "labels that look like one class spelled two ways (case, spaces, separators or a typo): "
            + "; ".join(f"{a!r} and {b!r}" for a, b, _ in pairs)
            + ". Each folder name is a class: merge the folders if they are one",
            [{"labels": [a, b], "why": why} for a, b, why in pairs],
        ))  # fmt: skip
    spaced = untidy(labels)
    if spaced:
        out.append(Finding(
            "label_whitespace", "warning",
            f"label(s) {', '.join(map(repr, spaced))} start or end with whitespace, which becomes part of the class "
            "name: rename the folders", [{"label": label} for label in spaced],
        ))  # fmt: skip
    return out


def image_findings(c: Collected, background: tuple[int, int, int] = WHITE) -> list[Finding]:
    """Transparency, blank pictures, tiny or very elongated images, unusual modes."""
    used = [(i.path, c.facts[i.path]) for i in c.items if i.path in c.facts]
    out: list[Finding] = []

    def add(code: str, severity: Severity, chosen: list[Path], message: str) -> None:
        if chosen:
            one = len(chosen) == 1
            verbs = {"are": _is(len(chosen)), "have": "has" if one else "have", "show": "shows" if one else "show"}
            out.append(Finding(code, severity, f"{_plural(len(chosen), 'image')} {message.format(**verbs)}",
                               [{"path": str(p)} for p in chosen]))  # fmt: skip

    add("transparency", "info", [p for p, f in used if f.transparent],
        f"{{have}} transparency: composited on RGB {background} in training and serving alike (model.json "
        "records it; --background changes it)")
    add("blank", "warning", [p for p, f in used if f.blank],
        "{show} one flat colour once composited (white icons on a white background?): check them, or train with "
        "--background set to a colour that contrasts with the drawing")
    add("tiny", "warning", [p for p, f in used if min(f.header.width, f.header.height) < SMALL_SIDE],
        f"{{are}} smaller than {SMALL_SIDE} px on a side: the model sees them upscaled several times; use larger "
        "images")
    add("elongated", "warning", [p for p, f in used if _aspect(f.header.width, f.header.height) > WIDE_ASPECT],
        f"{{are}} more than {WIDE_ASPECT:.0f}:1: the centre crop keeps less than a third; crop to the subject")
    add("odd_mode", "warning", [p for p, f in used if f.header.mode not in PLAIN_MODES],
        "{are} in an unusual pixel mode (CMYK, 16-bit, 1-bit...): converted to 8-bit RGB, colours or detail may "
        "change; convert to RGB yourself to be sure")
    return out


def _aspect(width: int, height: int) -> float:
    return max(width, height) / max(1, min(width, height))


_SCOPES = {
    "labels": ("warning", "under different labels: the model is taught both; keep one copy, correctly labelled"),
    "splits": ("warning", "in both train and val: validation accuracy looks better than it is; remove one copy"),
    "within": ("info", "within one class and split: they count twice in training; remove the extra copies"),
}


def duplicate_findings(c: Collected, near: bool) -> list[Finding]:
    items = [i for i in c.items if i.path in c.facts]
    kinds: list[tuple[str, str, list[Group]]] = [("duplicate", "exact duplicates", exact_duplicates(items, c.facts))]
    if near:
        kinds.append(("near_duplicate", "near-duplicates (the same picture re-encoded, resized or edited)",
                      near_duplicates(items, c.facts)))  # fmt: skip
    out: list[Finding] = []
    for code, what, groups in kinds:
        for scope, (severity, advice) in _SCOPES.items():
            chosen = [g for g in groups if g.scope == scope]
            if chosen:
                details = [{"paths": [str(i.path) for i in g.items], "labels": [i.label for i in g.items],
                            "splits": [i.split for i in g.items]} for g in chosen]  # fmt: skip
                message = f"{_plural(len(chosen), 'group')} of {what} {advice}"
                out.append(Finding(code, severity, message, details))  # type: ignore[arg-type]
    return out


def findings(c: Collected, near: bool = True, background: tuple[int, int, int] = WHITE) -> list[Finding]:
    """Every check; ``near=False`` leaves out the pairwise near-duplicate search (what ``graft train`` runs)."""
    labels = sorted({i.label for i in c.items})
    out = layout_findings(c) + skipped_findings(c) + size_findings(c) + label_findings(labels)
    out += image_findings(c, background) + duplicate_findings(c, near)
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(out, key=lambda f: order[f.severity])


def check_data(
    source: Path, background: tuple[int, int, int] = WHITE, val_fraction: float = 0.2, seed: int = 0
) -> CheckReport:
    """Read every image of a folder or manifest once and report what :func:`findings` finds."""
    t0 = time.perf_counter()
    source = Path(source)
    if source.is_file():
        c = collect_manifest(source, None, seed, val_fraction, background=background)
        layout = "manifest"
    else:
        c = collect_folder(source, val_fraction, seed, background=background)
        by_seed = f"DIR/<label>/, a share of {val_fraction:g} split off by seed {seed} for validation"
        layout = "DIR/train/<label>/ + DIR/val/<label>/" if c.layout and c.layout.split_dirs else by_seed
    heads = [f.header for f in c.facts.values()]
    return CheckReport(
        source=c.source, layout=layout, images=len(c.items), skipped=len(c.skipped), classes=class_counts(c.items),
        formats=dict(Counter(h.format for h in heads).most_common()),
        modes=dict(Counter(h.mode for h in heads).most_common()),
        findings=findings(c, near=True, background=background), seconds=round(time.perf_counter() - t0, 2),
    )  # fmt: skip
