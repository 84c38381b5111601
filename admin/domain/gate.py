"""The promotion gate: candidate against champion, image by image, on holdout images neither model saw.

Pure functions over per-image predictions, so the rule is tested without training anything:

* the caller passes only *fair* holdout images: none that either model trained or selected on (see
  :mod:`admin.domain.fairness`); the decision says how many that is and how many were left out;
* both models are scored on the images whose label *both* know (a new label the champion never saw
  cannot count against it, nor for the candidate); new labels are reported apart;
* the comparison is paired (:mod:`admin.domain.paired`): the accuracy difference with a bootstrap
  interval, the exact McNemar test on the discordant images, and each class's recall change;
* policies: ``non_inferior`` (the default) promotes unless the candidate is significantly worse
  (one-sided exact McNemar at ``alpha``) or one class's recall fell significantly (Holm-corrected);
  ``better`` promotes only a candidate that is significantly better; ``accuracy`` is graft's first rule,
  ``cand >= champ - tolerance`` on raw accuracy (the only policy that reads ``tolerance``);
* every policy: the candidate must meet ``floor``, and too few fair images is a rejection.

Why non-inferiority by default: a candidate is trained on a superset of the champion's data, so "at least
as good" is the expectation, and a rule that demands proof of improvement rejects most real improvements
on the few hundred holdout images a small project has (TFMA's validation with confidence intervals makes
the same choice: a threshold fails only when the whole interval is on the wrong side). A margin on the point
estimate is no help here: on a small holdout it rejects on one image's noise, on a large one a real drop of
that size is significant anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from admin.domain.paired import (
    ClassChange,
    PairedComparison,
    class_changes,
    compare,
    fewest_to_reject,
    images_to_settle,
)

GatePolicy = Literal["non_inferior", "better", "accuracy"]
GATE_POLICIES: tuple[GatePolicy, ...] = ("non_inferior", "better", "accuracy")
# Accuracy is a ratio of small integers; this absorbs float rounding, never a real difference.
_EPS = 1e-9


@dataclass(frozen=True)
class GateRule:
    policy: GatePolicy = "non_inferior"
    tolerance: float = 0.0  # the accuracy policy: how much lower a candidate may score
    floor: float = 0.0
    min_holdout: int = 1
    alpha: float = 0.05
    holdout_fraction: float = 0.2  # only to turn "holdout images needed" into "uploads needed"


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
    candidate_all: Score  # the candidate on every fair holdout image whose label it knows
    tolerance: float
    floor: float
    policy: GatePolicy = "non_inferior"
    alpha: float = 0.05
    comparison: PairedComparison | None = None
    classes: list[ClassChange] = field(default_factory=list)
    regressed: list[str] = field(default_factory=list)  # classes whose recall fell significantly
    left_out: int = 0  # holdout images left out because one of the two models trained or selected on them
    advice: list[str] = field(default_factory=list)  # what to do next, when the candidate was rejected
    summary: str = ""  # the comparison in one line of words
    # The refit's own head on the same images, when the candidate is its average with the champion's
    # (:func:`with_unaveraged`): summary, p_worse, regressed, rejected.
    unaveraged: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["champion"] = None if self.champion is None else self.champion.as_dict()
        out["comparison"] = None if self.comparison is None else self.comparison.as_dict()
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
    rule: GateRule | None = None,
    left_out: int = 0,
    **overrides: Any,
) -> GateDecision:
    """Judge the candidate; ``champion_*`` None means there is no model in service yet.

    ``rule`` (or keyword overrides of its fields: ``tolerance=0.01``) says how; ``left_out`` is how many
    holdout images the caller left out as unfair, for the report."""
    rule = GateRule(**{**asdict(rule or GateRule()), **overrides})
    cand_set = set(candidate_labels)
    champ_set = set(champion_labels) if champion_labels is not None else cand_set
    shared = cand_set & champ_set
    cand = score(truth, candidate_pred, shared)
    champ = score(truth, champion_pred, shared) if champion_pred is not None else None
    new = sorted(cand_set - champ_set) if champion_labels is not None else []
    dropped = sorted(champ_set - cand_set) if champion_labels is not None else []
    comparison, classes = None, []
    if champion_pred is not None:
        idx = [i for i, t in enumerate(truth) if t in shared]
        cand_right = [candidate_pred[i] == truth[i] for i in idx]
        champ_right = [champion_pred[i] == truth[i] for i in idx]
        comparison = compare(cand_right, champ_right, 1.0 - rule.alpha)
        classes = class_changes([truth[i] for i in idx], cand_right, champ_right, rule.alpha)
    verdict = _verdict(rule, cand, champ, comparison, classes, left_out)
    reason = verdict.reason
    if new:
        reason += f"; new label(s) not judged against the champion: {', '.join(new)}"
    if dropped:
        reason += f"; label(s) the candidate no longer predicts: {', '.join(dropped)}"
    return GateDecision(
        verdict.passed, reason, cand, champ, sorted(shared), new, dropped,
        score(truth, candidate_pred, cand_set), rule.tolerance, rule.floor, rule.policy, rule.alpha,
        comparison, classes, verdict.regressed, left_out, verdict.advice, verdict.summary,
    )  # fmt: skip


@dataclass
class _Verdict:
    passed: bool
    reason: str
    summary: str = ""
    regressed: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def describe(comparison: PairedComparison, left_out: int = 0, who: str = "candidate", again: bool = False) -> str:
    """"candidate +0.7 points (95% CI -2.1 to +3.5) on 340 paired holdout images neither model saw, 23
    discordant (12 only the candidate got right, 11 only the champion)"; ``again``: the images were described
    already (the refit alone, judged on the candidate's images), "on the same 340 images"."""
    c = comparison
    unseen = " neither model saw" + (f" ({left_out} more left out: a model trained or selected on them)"
                                     if left_out else "")  # fmt: skip
    images = f"the same {c.n} images" if again else f"{c.n} paired holdout images{unseen}"
    return (
        f"{who} {_points(c.difference)} points ({100 * c.level:.0f}% CI {_points(c.ci_low)} to "
        f"{_points(c.ci_high)}) on {images}, {c.discordant} discordant "
        f"({c.candidate_only} only {'the ' if who == 'candidate' else ''}{who} got right, {c.champion_only} only the"
        " champion)"
    )


def _verdict(
    rule: GateRule,
    cand: Score,
    champ: Score | None,
    comparison: PairedComparison | None,
    classes: list[ClassChange],
    left_out: int,
) -> _Verdict:
    c = f"candidate {cand.accuracy:.4f} ({cand.correct}/{cand.n})"
    if cand.n < rule.min_holdout:
        more = rule.min_holdout - cand.n
        advice = [f"label about {_uploads(more, rule)} more images (1 in {1 / rule.holdout_fraction:.0f} goes to the "
                  f"holdout) so that {rule.min_holdout} holdout images judge the next candidate"]  # fmt: skip
        why = f" ({left_out} left out: a model trained or selected on them)" if left_out else ""
        return _Verdict(False, f"rejected: only {cand.n} fair holdout image(s){why} with labels both models know; "
                        f"need {rule.min_holdout}", advice=advice)  # fmt: skip
    if cand.accuracy + _EPS < rule.floor:
        return _Verdict(False, f"rejected: {c} is below the floor {rule.floor:.4f}",
                        advice=["the candidate is not good enough on its own: more or cleaner training data, "
                                "or another recipe"])  # fmt: skip
    if champ is None or comparison is None:
        return _Verdict(True, f"passed: {c} meets the floor {rule.floor:.4f}; there is no champion to beat")
    h = f"champion {champ.accuracy:.4f} ({champ.correct}/{champ.n})"
    summary = describe(comparison, left_out)
    head = f"{c} vs {h}: {summary}"
    if rule.policy == "accuracy":
        return _accuracy_rule(rule, cand, champ, head, summary)
    if comparison.p_worse < rule.alpha:
        return _Verdict(False, f"rejected: {head}; significantly worse (p={comparison.p_worse:.3g} < {rule.alpha})",
                        summary, advice=["the candidate is worse than the model in service: check the labels of the "
                                         "samples added since the champion was trained, or retrain with another "
                                         "recipe"])  # fmt: skip
    regressed = [k for k in classes if k.fell]
    if regressed:
        names = "; ".join(f"{k.label} {k.champion_recall:.2f} -> {k.candidate_recall:.2f} (p={k.p_fell:.3g})"
                          for k in regressed)  # fmt: skip
        advice = [f"look at the samples labelled {k.label!r} added since the champion was trained: a wrong label or "
                  "a new kind of picture there is the usual cause" for k in regressed]  # fmt: skip
        return _Verdict(False, f"rejected: {head}; recall fell significantly for {names}", summary,
                        [k.label for k in regressed], advice)  # fmt: skip
    return _comparison_rule(rule, comparison, head, summary)


def _accuracy_rule(rule: GateRule, cand: Score, champ: Score, head: str, summary: str) -> _Verdict:
    if cand.accuracy + rule.tolerance + _EPS < champ.accuracy:
        return _Verdict(False, (
            f"rejected: candidate {cand.accuracy:.4f} ({cand.correct}/{cand.n}) is lower than champion "
            f"{champ.accuracy:.4f} ({champ.correct}/{champ.n}) by {champ.accuracy - cand.accuracy:.4f}, "
            f"more than the tolerance {rule.tolerance:.4f} (policy accuracy); {summary}"
        ), summary)  # fmt: skip
    return _Verdict(True, f"passed: {head}; within the tolerance {rule.tolerance:.4f} (policy accuracy)", summary)


def _comparison_rule(rule: GateRule, cmp: PairedComparison, head: str, summary: str) -> _Verdict:
    a = rule.alpha
    settle = images_to_settle(cmp, a)
    more = (f"about {settle} more fair holdout images (about {_uploads(settle, rule)} more labelled uploads) would "
            "settle whether the difference is real" if settle else "")  # fmt: skip
    if rule.policy == "better":
        if cmp.p_better < a:
            why = f"significantly better (p={cmp.p_better:.3g}, policy better)"
            return _Verdict(True, f"passed: {head}; {why}", summary)
        advice = [more] if more and cmp.difference > 0 else ["retrain when more labelled data has arrived"]
        return _Verdict(False, f"rejected: {head}; not significantly better (p={cmp.p_better:.3g} >= {a}, policy "
                        "better)", summary, advice=advice)  # fmt: skip
    fewest = fewest_to_reject(a)
    # Say it: a pass on so few images is a pass by default, not evidence.
    blind = (f", but {cmp.n} paired images could not have shown a drop (the exact test at {a} needs at least "
             f"{fewest})" if cmp.n < fewest else "")  # fmt: skip
    if cmp.difference < 0 and settle:
        return _Verdict(True, f"passed: {head}; not significantly worse (p={cmp.p_worse:.3g}){blind}; about {settle} "
                        "more fair holdout images would tell whether the drop is real", summary)  # fmt: skip
    return _Verdict(True, f"passed: {head}; not significantly worse (p={cmp.p_worse:.3g}){blind}", summary)


def _uploads(holdout_images: int, rule: GateRule) -> int:
    return round(holdout_images / rule.holdout_fraction)


def with_unaveraged(averaged: GateDecision, own: GateDecision) -> GateDecision:
    """The decision on a candidate whose head is an average with the champion's (training/distill.py), given
    the decision on the refit's own head before averaging, on the same images.

    Averaging pulls the candidate only part of the way towards what the new data teach, so a batch of wrong
    labels that would make the refit alone significantly worse can pass at half strength (gate benchmark part
    11). The averaged candidate serves only when the refit alone is not significantly worse, overall or for one
    class, whatever the policy; otherwise the job is rejected and says which."""
    cmp = own.comparison
    if cmp is None:
        return averaged
    fell = [k for k in own.classes if k.fell]
    worse = cmp.p_worse < own.alpha or bool(fell)
    said = describe(cmp, own.left_out, who="the refit alone")
    record = {"summary": said, "p_worse": cmp.p_worse, "regressed": [k.label for k in fell],
              "rejected": worse and averaged.passed}  # fmt: skip
    if not averaged.passed:
        return replace(averaged, unaveraged=record)
    if not worse:
        # After the averaged candidate's reason, which has described the images already.
        again = averaged.comparison is not None and averaged.comparison.n == cmp.n
        briefly = describe(cmp, own.left_out, who="the refit alone", again=again)
        return replace(averaged, reason=f"{averaged.reason}; before averaging with the champion, {briefly}: not "
                       f"significantly worse (p={cmp.p_worse:.3g})", unaveraged=record)  # fmt: skip
    if fell and cmp.p_worse >= own.alpha:
        names = ", ".join(f"{k.label} {k.champion_recall:.2f} -> {k.candidate_recall:.2f} (p={k.p_fell:.3g})"
                          for k in fell)  # fmt: skip
        what = f"recall fell significantly for {names}"
    else:
        what = f"significantly worse (p={cmp.p_worse:.3g} < {own.alpha})"
    reason = (f"rejected: before averaging with the champion, {said}; {what}. The samples added since the champion "
              f"pull the model the wrong way; averaged, as it would have served: {averaged.summary}")  # fmt: skip
    advice = ["check the labels of the samples added since the champion was trained (the job's data check "
              "lists the ones the model in service disagrees with), relabel or delete the wrong ones and retrain"]
    return replace(averaged, passed=False, reason=reason, regressed=[k.label for k in fell], advice=advice,
                   unaveraged=record)  # fmt: skip
