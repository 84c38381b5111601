"""Labels that look like one class spelled two ways: case, whitespace, separators, or a typo.

Folder names become labels verbatim, so ``Cat`` and ``cat``, ``golden retriever`` and ``golden_retriever``,
or ``ants`` and ``antss`` train as different classes that split one class's images between them. The measure
is the admin's typo guard's (:mod:`graft.core.typos`), so a folder and an upload are judged alike.
"""

from __future__ import annotations

from itertools import combinations

from graft.core.typos import allowance, edit_distance, skeleton


def _numbered(a: str, b: str) -> bool:
    """Labels differing in digits only (class_1, class_2) are numbered classes, not typos."""
    return len(a) == len(b) and all(x == y or (x.isdigit() and y.isdigit()) for x, y in zip(a, b, strict=True))


def look_alike(labels: list[str]) -> list[tuple[str, str, str]]:
    """(label, label, why) for each pair that looks like one class; why is ``spelling`` or ``typo``."""
    out: list[tuple[str, str, str]] = []
    for a, b in combinations(sorted(labels), 2):
        na, nb = skeleton(a), skeleton(b)
        if na == nb:
            out.append((a, b, "spelling"))
        elif not _numbered(na, nb) and edit_distance(na, nb) <= allowance(na, nb):
            out.append((a, b, "typo"))
    return out


def untidy(labels: list[str]) -> list[str]:
    """Labels with leading or trailing whitespace (invisible in most listings)."""
    return [label for label in labels if label != label.strip()]
