"""Labels that look like one class spelled two ways: the admin's typo guard and ``graft check`` share it.

"baterry" next to "battery", "Grey heron" next to "grey-heron", "cafe" next to "café": each would become a
class of its own, split the pictures of one class in two, and take a review key. Two names are close when
their *skeletons* (accents, case, spaces, ``-``, ``_`` and ``.`` removed) are equal, or within a small
edit distance (optimal string alignment: a swap of two neighbours is one edit). The allowance grows with the
length: none for one or two characters (classes "0".."9" or "A".."Z" are one edit apart and all meant), one
edit up to five, two from six. A false alarm ("cat" beside "car") costs one confirmation, once: the label
then exists and is matched exactly. ``graft check`` warns about folder names that are close in this sense.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

_IGNORED = set(" \t-_.")


def skeleton(name: str) -> str:
    """The name without what people do not mean to distinguish: accents, case, separators."""
    decomposed = unicodedata.normalize("NFKD", name)
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return "".join(ch for ch in bare.casefold() if ch not in _IGNORED and not ch.isspace())


def edit_distance(a: str, b: str, cap: int = 3) -> int:
    """Optimal string alignment distance, stopped early once every path costs more than ``cap``."""
    if abs(len(a) - len(b)) > cap:
        return cap + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > cap:
            return cap + 1
        prev2, prev = prev, cur
    return prev[-1]


def allowance(a: str, b: str) -> int:
    """Edits that still look like a slip: none for 1-2 characters, 1 up to 5, 2 from 6."""
    n = min(len(a), len(b))
    return 0 if n <= 2 else 1 if n <= 5 else 2


def similar(name: str, known: Iterable[str]) -> list[str]:
    """The known names ``name`` is suspiciously close to, closest first (never ``name`` itself)."""
    mine = skeleton(name)
    scored = []
    for other in known:
        if other == name:
            continue
        theirs = skeleton(other)
        d = edit_distance(mine, theirs)
        if d <= allowance(mine, theirs):
            scored.append((d, other))
    return [other for _, other in sorted(scored)]
