"""The promotion gate: candidate against champion on the same holdout, with the numbers in the reason.

Pure functions over per-image predictions, so the rule is tested without training anything:

* both models are scored on the holdout images whose label *both* know (a new label the champion
  never saw cannot count against it, nor for the candidate); new labels are reported apart;
* the candidate passes when ``cand >= champ - tolerance`` and ``cand >= floor``;
* with no champion (the first model), only the floor applies;
* too few shared holdout images is a rejection: no evidence, no promotion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# Accuracy is a ratio of small integers; this absorbs float rounding, never a real difference.
_EPS = 1e-9


@dataclass(frozen=True)
class Score:
    accuracy: float
    correct: int
    n: int
    per_class: dict[str, float] = field(default_factory=dict)  # recall per true label

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    candidate: Score
    champion: Score | None
    shared_labels: list[str]
    new_labels: list[str]
    dropped_labels: list[str]
    candidate_all: Score  # the candidate on every holdout image whose label it knows
    tolerance: float
    floor: float

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["champion"] = None if self.champion is None else self.champion.as_dict()
        return out


def score(truth: Sequence[str], predicted: Sequence[str | None], keep: set[str]) -> Score:
    """Accuracy over the images whose true label is in ``keep``; unreadable (None) counts as wrong."""
    correct: dict[str, int] = {}
    total: dict[str, int] = {}
    for t, p in zip(truth, predicted, strict=True):
        if t not in keep:
            continue
        total[t] = total.get(t, 0) + 1
        correct[t] = correct.get(t, 0) + int(p == t)
    n, c = sum(total.values()), sum(correct.values())
    per_class = {label: round(correct[label] / total[label], 6) for label in sorted(total)}
    return Score(round(c / n, 6) if n else 0.0, c, n, per_class)


def decide(
    truth: Sequence[str],
    candidate_pred: Sequence[str | None],
    candidate_labels: Sequence[str],
    champion_pred: Sequence[str | None] | None,
    champion_labels: Sequence[str] | None,
    *,
    tolerance: float = 0.0,
    floor: float = 0.0,
    min_holdout: int = 1,
) -> GateDecision:
    """Judge the candidate; ``champion_*`` None means there is no model in service yet."""
    cand_set = set(candidate_labels)
    champ_set = set(champion_labels) if champion_labels is not None else cand_set
    shared = cand_set & champ_set
    cand = score(truth, candidate_pred, shared)
    champ = score(truth, champion_pred, shared) if champion_pred is not None else None
    new = sorted(cand_set - champ_set) if champion_labels is not None else []
    dropped = sorted(champ_set - cand_set) if champion_labels is not None else []
    passed, reason = _verdict(cand, champ, tolerance, floor, min_holdout)
    if new:
        reason += f"; new label(s) not judged against the champion: {', '.join(new)}"
    if dropped:
        reason += f"; label(s) the candidate no longer predicts: {', '.join(dropped)}"
    return GateDecision(
        passed,
        reason,
        cand,
        champ,
        sorted(shared),
        new,
        dropped,
        score(truth, candidate_pred, cand_set),
        tolerance,
        floor,
    )


def _verdict(cand: Score, champ: Score | None, tolerance: float, floor: float, min_holdout: int) -> tuple[bool, str]:
    c = f"candidate {cand.accuracy:.4f} ({cand.correct}/{cand.n})"
    if cand.n < min_holdout:
        return False, f"rejected: only {cand.n} holdout image(s) with labels both models know; need {min_holdout}"
    if cand.accuracy + _EPS < floor:
        return False, f"rejected: {c} is below the floor {floor:.4f}"
    if champ is None:
        return True, f"passed: {c} meets the floor {floor:.4f}; there is no champion to beat"
    h = f"champion {champ.accuracy:.4f} ({champ.correct}/{champ.n})"
    if cand.accuracy + tolerance + _EPS < champ.accuracy:
        return False, (
            f"rejected: {c} is lower than {h} by {champ.accuracy - cand.accuracy:.4f}, "
            f"more than the tolerance {tolerance:.4f}, on the same holdout"
        )
    return True, f"passed: {c} vs {h} on the same holdout (tolerance {tolerance:.4f}, floor {floor:.4f})"
