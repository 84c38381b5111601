"""Paired statistics for two models judged on the same images: what the gate's decision rests on.

Both models predict every image, so only the *discordant* images (one model right, the other wrong) carry
evidence about which is better; the images both get right or both get wrong say nothing about the
difference. With ``b`` images only the candidate gets right and ``c`` only the champion gets right:

* the exact McNemar test: under "equally good", ``b ~ Binomial(b + c, 1/2)``; one-sided p-values say how
  surprising the split is if neither model is better;
* the accuracy difference ``(b - c) / n`` with a paired bootstrap interval: resampling *pairs* keeps the
  correlation between the two models' errors (the images are the unit, not the predictions);
* per class, the same exact test on the class's own discordant images, Holm-corrected across classes, so
  a class whose recall fell is named without raising false alarms whenever there are many classes.

Pure functions over counts and predictions (numpy only), tested against known values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

BOOTSTRAP_DRAWS = 10_000
# The bootstrap is seeded: the same predictions always give the same interval (and the same decision).
BOOTSTRAP_SEED = 20_201


def binom_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2): exact integer sums for small n, log-space sums beyond."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if n <= 400:  # exact, and fast at this size
        return sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(x - top) for x in logs))


def mcnemar_exact(b: int, c: int) -> tuple[float, float, float]:
    """(two-sided, p that the first is worse, p that the first is better) of the exact McNemar test.

    ``b``: pairs only the first got right; ``c``: pairs only the second got right. ``p_worse`` is the
    one-sided p-value against "the first is not worse" (small when c is much larger than b).
    """
    n = b + c
    if n == 0:
        return 1.0, 1.0, 1.0
    p_worse = binom_cdf_half(b, n)  # P(B <= b): as few candidate wins as seen, or fewer
    p_better = binom_cdf_half(c, n)  # P(C <= c)
    two_sided = min(1.0, 2.0 * min(p_worse, p_better))
    return two_sided, p_worse, p_better


def bootstrap_interval(
    counts: tuple[int, int, int, int], level: float = 0.95, draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """Percentile interval of the accuracy difference ``(b - c) / n`` under a paired bootstrap.

    ``counts`` = (both right, only the first right, only the second right, both wrong). Resampling n pairs
    with replacement is a multinomial draw over those four kinds, so no per-image loop is needed.
    """
    n = sum(counts)
    if n == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    sample = rng.multinomial(n, np.asarray(counts, dtype=float) / n, size=draws)
    diffs = (sample[:, 1] - sample[:, 2]) / n
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedComparison:
    """Candidate against champion on the same n images (differences are candidate minus champion)."""

    n: int
    both_right: int
    candidate_only: int  # b: the candidate right, the champion wrong
    champion_only: int  # c: the champion right, the candidate wrong
    both_wrong: int
    difference: float  # accuracy difference, (b - c) / n
    ci_low: float
    ci_high: float
    level: float
    p_two_sided: float
    p_worse: float  # one-sided: small when the candidate is worse
    p_better: float  # one-sided: small when the candidate is better

    @property
    def discordant(self) -> int:
        return self.candidate_only + self.champion_only

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "discordant": self.discordant}


def compare(candidate_right: Sequence[bool], champion_right: Sequence[bool], level: float = 0.95) -> PairedComparison:
    """The paired comparison of two models' per-image correctness on the same images."""
    a = b = c = d = 0
    for x, y in zip(candidate_right, champion_right, strict=True):
        if x and y:
            a += 1
        elif x:
            b += 1
        elif y:
            c += 1
        else:
            d += 1
    n = a + b + c + d
    low, high = bootstrap_interval((a, b, c, d), level)
    two, worse, better = mcnemar_exact(b, c)
    diff = (b - c) / n if n else 0.0
    return PairedComparison(n, a, b, c, d, round(diff, 6), round(low, 6), round(high, 6), level,
                            round(two, 6), round(worse, 6), round(better, 6))  # fmt: skip


@dataclass(frozen=True)
class ClassChange:
    """One class's recall, champion then candidate, and the Holm-adjusted p-value that it fell."""

    label: str
    n: int
    champion_recall: float
    candidate_recall: float
    candidate_only: int
    champion_only: int
    p_fell: float  # one-sided exact McNemar on this class's images, Holm-adjusted across classes
    fell: bool  # significantly, at the gate's alpha

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def class_changes(
    truth: Sequence[str], candidate_right: Sequence[bool], champion_right: Sequence[bool], alpha: float
) -> list[ClassChange]:
    """Per-class recall changes; ``fell`` marks the classes whose recall fell significantly (Holm)."""
    by_class: dict[str, list[tuple[bool, bool]]] = {}
    for t, x, y in zip(truth, candidate_right, champion_right, strict=True):
        by_class.setdefault(t, []).append((x, y))
    raw: list[tuple[str, int, float, float, int, int, float]] = []
    for label in sorted(by_class):
        pairs = by_class[label]
        b = sum(1 for x, y in pairs if x and not y)
        c = sum(1 for x, y in pairs if y and not x)
        n = len(pairs)
        cand = sum(1 for x, _ in pairs if x) / n
        champ = sum(1 for _, y in pairs if y) / n
        raw.append((label, n, champ, cand, b, c, mcnemar_exact(b, c)[1]))
    adjusted = holm([r[6] for r in raw])
    return [ClassChange(label, n, round(champ, 6), round(cand, 6), b, c, round(p, 6), p < alpha)
            for (label, n, champ, cand, b, c, _), p in zip(raw, adjusted, strict=True)]  # fmt: skip


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone), in the input's order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def fewest_to_reject(alpha: float) -> int:
    """The fewest paired images on which the one-sided exact test can reach ``alpha`` at all: the smallest
    p it can give on n images is when the champion alone got every one right, so fewer could never show a drop."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], not {alpha}")
    n = 1
    while mcnemar_exact(0, n)[1] >= alpha:  # the gate rejects on p_worse < alpha, strictly
        n += 1
    return n


def images_to_settle(comparison: PairedComparison, alpha: float) -> int | None:
    """About how many more paired images would make the observed difference significant (two-sided ``alpha``),
    if the models kept disagreeing as they do now; None when they never disagree or tie exactly."""
    n, diff = comparison.n, comparison.difference
    if n == 0 or comparison.discordant == 0 or diff == 0:
        return None
    z = _z(1.0 - alpha / 2.0)
    variance = comparison.discordant / n - diff * diff  # per-image variance of the paired difference
    needed = math.ceil(z * z * variance / (diff * diff))
    return max(0, needed - n)


def _z(q: float) -> float:
    """The standard normal quantile (Acklam-free: bisection on erf is plenty for a handful of calls)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        if 0.5 * (1.0 + math.erf(mid / math.sqrt(2.0))) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0
