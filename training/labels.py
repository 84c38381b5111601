"""Labels that look like one class spelled two ways: case, whitespace, separators, or a typo.

Folder names become labels verbatim, so ``Cat`` and ``cat``, ``golden retriever`` and ``golden_retriever``,
or ``ants`` and ``antss`` train as different classes that split one class's images between them.
"""

from __future__ import annotations

import re
from itertools import combinations


def normalized(label: str) -> str:
    """Case folded; runs of whitespace, '_', '-' and '.' as one space; stripped."""
    return re.sub(r"[\s_.\-]+", " ", label.casefold()).strip()


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _typo_budget(a: str, b: str) -> int:
    """Edits that still look like a slip of the keyboard: none for short labels, 1 from 4 letters, 2 from 9."""
    shortest = min(len(a), len(b))
    return 0 if shortest < 4 else 1 if shortest < 9 else 2


def _numbered(a: str, b: str) -> bool:
    """Labels differing in digits only (class_1, class_2) are numbered classes, not typos."""
    return len(a) == len(b) and all(x == y or (x.isdigit() and y.isdigit()) for x, y in zip(a, b, strict=True))


def look_alike(labels: list[str]) -> list[tuple[str, str, str]]:
    """(label, label, why) for each pair that looks like one class; why is ``spelling`` or ``typo``."""
    out: list[tuple[str, str, str]] = []
    for a, b in combinations(sorted(labels), 2):
        na, nb = normalized(a), normalized(b)
        if na == nb:
            out.append((a, b, "spelling"))
        elif not _numbered(na, nb) and edit_distance(na, nb) <= _typo_budget(na, nb):
            out.append((a, b, "typo"))
    return out


def untidy(labels: list[str]) -> list[str]:
    """Labels with leading or trailing whitespace (invisible in most listings)."""
    return [label for label in labels if label != label.strip()]
