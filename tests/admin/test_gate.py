"""The promotion gate: a paired comparison on the same images (pure functions over predictions)."""

from __future__ import annotations

import math

import pytest

from admin.domain.gate import decide, score, with_unaveraged
from admin.domain.paired import (
    bootstrap_interval,
    class_changes,
    compare,
    fewest_to_reject,
    holm,
    images_to_settle,
    mcnemar_exact,
)


def _preds(truth: list[str], wrong: set[int], other: str = "z") -> list[str | None]:
    return [other if i in wrong else t for i, t in enumerate(truth)]


def test_exact_mcnemar_matches_known_values() -> None:
    # Two-sided exact McNemar: 2 * P(X <= min(b, c)) for X ~ Bin(b + c, 1/2).
    assert mcnemar_exact(1, 9)[0] == pytest.approx(2 * 11 / 1024)  # 0.021484375
    assert mcnemar_exact(0, 5)[0] == pytest.approx(2 / 32)
    assert mcnemar_exact(5, 5)[0] == 1.0
    assert mcnemar_exact(0, 0) == (1.0, 1.0, 1.0)
    two, worse, better = mcnemar_exact(2, 12)
    assert worse == pytest.approx(sum(math.comb(14, i) for i in range(3)) / 2**14)  # 0.00647
    assert better == pytest.approx(1 - 15 / 2**14), "P(C <= 12): large, the candidate is not better"
    assert two == pytest.approx(2 * worse)
    # Large counts: log-space sums, checked against scipy.
    assert mcnemar_exact(4900, 5100)[1] == pytest.approx(0.0232927638, rel=1e-8)  # scipy.stats.binomtest


def test_paired_bootstrap_interval_agrees_with_the_normal_approximation() -> None:
    # 100 pairs, 10 only the candidate right: diff 0.10, se sqrt(0.10 - 0.01) / 10 = 0.03.
    low, high = bootstrap_interval((80, 10, 0, 10))
    assert low == pytest.approx(0.10 - 1.96 * 0.03, abs=0.012) and high == pytest.approx(0.10 + 1.96 * 0.03, abs=0.012)
    assert bootstrap_interval((80, 10, 0, 10)) == (low, high), "seeded: the same counts give the same interval"
    low, high = bootstrap_interval((400, 30, 30, 40))
    assert low < 0 < high and abs(low + high) < 0.01, "no difference: an interval centred on zero"


def test_holm_and_images_to_settle() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    cmp = compare([True] * 12 + [False] * 8 + [True] * 80, [False] * 12 + [True] * 8 + [True] * 80)
    assert cmp.discordant == 20 and cmp.difference == pytest.approx(0.04)
    more = images_to_settle(cmp, 0.05)
    # (1.96^2 * (0.20 - 0.0016) / 0.0016) = 476 pairs in all: about 376 more.
    assert more is not None and 370 <= more <= 380
    tie = compare([True, False], [False, True])
    assert images_to_settle(tie, 0.05) is None


def test_a_tie_is_not_a_rejection() -> None:
    truth = ["a"] * 50 + ["b"] * 50
    champion = _preds(truth, {1, 2, 60})
    candidate = _preds(truth, {3, 4, 61})  # different mistakes, same count
    d = decide(truth, candidate, ["a", "b"], champion, ["a", "b"])
    assert d.passed and d.comparison is not None and d.comparison.discordant == 6
    assert "candidate +0.0 points (95% CI" in d.reason and "6 discordant" in d.reason
    assert "not significantly worse" in d.reason
    exact = decide(truth, champion, ["a", "b"], champion, ["a", "b"])
    assert exact.passed and exact.comparison is not None and exact.comparison.discordant == 0


def test_non_inferior_policy_rejects_a_significant_drop_and_says_why() -> None:
    truth = ["a"] * 100 + ["b"] * 100
    champion = _preds(truth, set(range(0, 200, 25)))  # 8 wrong
    candidate = _preds(truth, set(range(0, 200, 25)) | set(range(1, 200, 10)))  # 20 more wrong
    d = decide(truth, candidate, ["a", "b"], champion, ["a", "b"])
    assert not d.passed and "significantly worse" in d.reason and d.comparison is not None
    assert d.comparison.p_worse < 1e-5 and d.comparison.ci_high < 0 and d.advice
    assert d.reason.startswith("rejected: candidate 0.8600 (172/200) vs champion 0.9600 (192/200)")
    assert "200 paired holdout images neither model saw" in d.reason


def test_noise_is_promoted_and_the_report_says_how_many_images_would_settle_it() -> None:
    truth = ["a"] * 20 + ["b"] * 20
    champion = _preds(truth, {0, 1})  # 38/40
    candidate = _preds(truth, {0, 1, 2})  # 37/40: one image, -2.5 points (the case the old rule rejected)
    d = decide(truth, candidate, ["a", "b"], champion, ["a", "b"])
    assert d.passed and "not significantly worse" in d.reason
    old = decide(truth, candidate, ["a", "b"], champion, ["a", "b"], policy="accuracy", tolerance=0.0)
    assert not old.passed and "lower than champion 0.9500 (38/40) by 0.0250" in old.reason
    worse = _preds(truth, {0, 1, 2, 3, 25})  # 35/40: -7.5 points, p = 0.125: not proven
    d = decide(truth, worse, ["a", "b"], champion, ["a", "b"])
    assert d.passed and "more fair holdout images would tell whether the drop is real" in d.reason, d.reason
    much_worse = _preds(truth, {0, 1} | set(range(2, 9)))  # 31/40: 7 lost, none won, p = 0.0078
    d = decide(truth, much_worse, ["a", "b"], champion, ["a", "b"])
    assert not d.passed and "significantly worse (p=0.00781" in d.reason


def test_a_pass_on_too_few_images_to_show_a_drop_says_so() -> None:
    assert [fewest_to_reject(a) for a in (0.05, 0.01, 0.25, 0.5)] == [5, 7, 3, 2]  # p < alpha, strictly
    truth = ["a", "a", "b", "b"]
    d = decide(truth, truth, ["a", "b"], truth, ["a", "b"])
    blind = "4 paired images could not have shown a drop (the exact test at 0.05 needs at least 5)"
    assert d.passed and blind in d.reason, d.reason
    five = [*truth, "b"]
    enough = decide(five, five, ["a", "b"], five, ["a", "b"])
    assert enough.passed and "could not have shown" not in enough.reason
    lost = decide(truth, ["b", "a", "a", "b"], ["a", "b"], truth, ["a", "b"])  # 2 lost of 4: p = 0.25
    assert lost.passed and "could not have shown a drop" in lost.reason and lost.comparison is not None
    assert mcnemar_exact(0, 4)[1] == 1 / 16 and mcnemar_exact(0, 5)[1] < 0.05  # why 5 is the fewest at 0.05


def test_better_policy_needs_significance() -> None:
    truth = ["a"] * 50 + ["b"] * 50
    champion = _preds(truth, set(range(0, 100, 5)))  # 20 wrong
    slightly = _preds(truth, set(range(0, 100, 5)) - {0, 5})  # 2 fixed
    d = decide(truth, slightly, ["a", "b"], champion, ["a", "b"], policy="better")
    assert not d.passed and "not significantly better" in d.reason and d.advice
    much = _preds(truth, {0, 5})  # 18 fixed
    assert decide(truth, much, ["a", "b"], champion, ["a", "b"], policy="better").passed


def test_a_class_whose_recall_fell_is_named() -> None:
    truth = ["a"] * 40 + ["b"] * 40 + ["c"] * 40
    champion = _preds(truth, set(range(0, 10)) | {40, 41} | set(range(80, 90)), other="a")  # 22 wrong
    # the candidate fixes every image of a and c but loses 13 more of b's 40: better overall, b much worse
    candidate = _preds(truth, set(range(40, 55)), other="a")
    d = decide(truth, candidate, ["a", "b", "c"], champion, ["a", "b", "c"])
    assert not d.passed and d.regressed == ["b"], d.reason
    assert "recall fell significantly for b 0.95 -> 0.62" in d.reason and any("'b'" in a for a in d.advice)
    changes = {c.label: c for c in d.classes}
    assert not changes["a"].fell and not changes["c"].fell and changes["b"].p_fell < 0.05
    # the same drop spread thinly over classes is not a class regression
    flat = class_changes(["a", "b"] * 10, [True] * 20, [True] * 20, 0.05)
    assert not any(c.fell for c in flat)


def test_gate_compares_on_shared_labels_and_reports_new_ones() -> None:
    truth = ["a", "a", "b", "b", "c", "c"]
    champion = ["a", "a", "b", "a", "a", "a"]  # knows a, b: 3/4 on shared
    candidate = ["a", "a", "b", "b", "c", "a"]  # knows a, b, c: 4/4 on shared
    d = decide(truth, candidate, ["a", "b", "c"], champion, ["a", "b"])
    assert d.passed and d.candidate.n == 4 and d.candidate.accuracy == 1.0 and d.champion is not None
    assert d.champion.accuracy == 0.75 and d.new_labels == ["c"] and d.shared_labels == ["a", "b"]
    assert d.candidate_all.n == 6 and d.candidate_all.correct == 5
    assert "1.0000 (4/4)" in d.reason and "0.7500 (3/4)" in d.reason and "c" in d.reason
    assert d.comparison is not None and d.comparison.n == 4, "the paired test counts shared labels only"


def test_accuracy_policy_floor_and_first_model() -> None:
    truth = ["a"] * 10 + ["b"] * 10
    good = list(truth)
    worse = ["a"] * 10 + ["b"] * 9 + ["a"]  # 0.95
    assert decide(truth, worse, ["a", "b"], good, ["a", "b"], policy="accuracy", tolerance=0.05).passed
    assert not decide(truth, worse, ["a", "b"], good, ["a", "b"], policy="accuracy", tolerance=0.049).passed
    floor = decide(truth, worse, ["a", "b"], None, None, floor=0.96)
    assert not floor.passed and "below the floor 0.9600" in floor.reason
    first = decide(truth, worse, ["a", "b"], None, None, floor=0.9)
    assert first.passed and "no champion" in first.reason and first.comparison is None


def test_gate_needs_evidence() -> None:
    d = decide(["x"], ["x"], ["a", "b"], ["a"], ["a", "b"], min_holdout=1)
    assert not d.passed and "only 0 fair holdout" in d.reason
    d = decide(["a"] * 3, ["a"] * 3, ["a", "b"], ["a"] * 3, ["a", "b"], min_holdout=10, left_out=40)
    assert not d.passed and "40 left out" in d.reason and "35 more images" in d.advice[0]
    assert score(["a", "b"], [None, "b"], {"a", "b"}).correct == 1  # unreadable counts as wrong


def test_an_averaged_candidate_serves_only_when_the_refit_alone_is_not_significantly_worse() -> None:
    truth = ["a"] * 20 + ["b"] * 20
    champion = _preds(truth, {0, 1})  # 38/40
    averaged = _preds(truth, {0, 1, 2, 3, 25})  # 35/40: not significantly worse alone (p = 0.125)
    d = decide(truth, averaged, ["a", "b"], champion, ["a", "b"])
    assert d.passed
    # The refit alone lost 8 of b's 20 to a: significantly worse, the averaged candidate is rejected with it.
    alone = [p if i not in range(20, 28) else "a" for i, p in enumerate(champion)]
    out = with_unaveraged(d, decide(truth, alone, ["a", "b"], champion, ["a", "b"]))
    assert not out.passed and out.unaveraged is not None and out.unaveraged["rejected"]
    assert out.reason.startswith("rejected: before averaging with the champion, the refit alone -20.0 points")
    assert "significantly worse (p=0.0039" in out.reason
    assert "on 40 paired holdout images neither model saw, 8 discordant (0 only the refit alone got right" in out.reason
    assert "averaged, as it would have served: candidate -7.5" in out.reason
    assert out.regressed == ["b"] and out.advice and "data check" in out.advice[0]
    assert out.candidate == d.candidate and out.comparison == d.comparison  # the report stays the averaged one's
    # The refit alone no worse than the champion: the averaged candidate passes, and the reason says both.
    fine = with_unaveraged(d, decide(truth, _preds(truth, {0, 2}), ["a", "b"], champion, ["a", "b"]))
    assert fine.passed and fine.unaveraged is not None and not fine.unaveraged["rejected"]
    assert fine.reason.startswith(d.reason)
    assert "before averaging with the champion, the refit alone +0.0 points" in fine.reason
    # The images are named once: the refit alone was judged on the same ones.
    assert fine.reason.count("paired holdout images") == 1 and "on the same 40 images, 2 discordant" in fine.reason
    assert "(1 only the refit alone got right, 1 only the champion)" in fine.reason, fine.reason
    # One class fell significantly while the whole did not: still rejected, the class named.
    three = ["a"] * 30 + ["b"] * 30 + ["c"] * 30
    champ3 = _preds(three, set(range(60, 68)))  # wrong on 8 of c
    swap = _preds(three, set(range(30, 38)), other="c")  # fixes c's 8, loses 8 of b: -0.0 overall
    mixed = with_unaveraged(decide(three, champ3, ["a", "b", "c"], champ3, ["a", "b", "c"]),
                            decide(three, swap, ["a", "b", "c"], champ3, ["a", "b", "c"]))  # fmt: skip
    assert not mixed.passed and "recall fell significantly for b 1.00 -> 0.73" in mixed.reason, mixed.reason
    # A rejected candidate stays rejected for its own reason; the refit alone is only recorded.
    worse = decide(truth, alone, ["a", "b"], champion, ["a", "b"])
    same = with_unaveraged(worse, decide(truth, champion, ["a", "b"], champion, ["a", "b"]))
    assert not same.passed and same.reason == worse.reason and same.unaveraged is not None
    assert not same.unaveraged["rejected"]
    # No champion, no comparison: nothing to add.
    first = decide(truth, averaged, ["a", "b"], None, None)
    assert with_unaveraged(first, decide(truth, alone, ["a", "b"], None, None)) == first
