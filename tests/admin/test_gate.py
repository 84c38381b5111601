"""The promotion gate: candidate against champion on the same holdout (pure functions over predictions)."""

from __future__ import annotations

from admin.domain.gate import decide, score


def test_gate_compares_on_shared_labels_and_reports_new_ones() -> None:
    truth = ["a", "a", "b", "b", "c", "c"]
    champion = ["a", "a", "b", "a", "a", "a"]  # knows a, b: 3/4 on shared
    candidate = ["a", "a", "b", "b", "c", "a"]  # knows a, b, c: 4/4 on shared
    d = decide(truth, candidate, ["a", "b", "c"], champion, ["a", "b"])
    assert d.passed and d.candidate.n == 4 and d.candidate.accuracy == 1.0 and d.champion is not None
    assert d.champion.accuracy == 0.75 and d.new_labels == ["c"] and d.shared_labels == ["a", "b"]
    assert d.candidate_all.n == 6 and d.candidate_all.correct == 5
    assert "1.0000 (4/4)" in d.reason and "0.7500 (3/4)" in d.reason and "c" in d.reason


def test_gate_tolerance_floor_and_ties() -> None:
    truth = ["a"] * 10 + ["b"] * 10
    good = list(truth)
    worse = ["a"] * 10 + ["b"] * 9 + ["a"]  # 0.95
    tie = decide(truth, good, ["a", "b"], good, ["a", "b"])
    assert tie.passed, "not lower = promoted (tolerance 0)"
    drop = decide(truth, worse, ["a", "b"], good, ["a", "b"])
    assert not drop.passed and "lower than champion 1.0000 (20/20) by 0.0500" in drop.reason
    assert decide(truth, worse, ["a", "b"], good, ["a", "b"], tolerance=0.05).passed
    assert not decide(truth, worse, ["a", "b"], good, ["a", "b"], tolerance=0.049).passed
    floor = decide(truth, worse, ["a", "b"], None, None, floor=0.96)
    assert not floor.passed and "below the floor 0.9600" in floor.reason
    first = decide(truth, worse, ["a", "b"], None, None, floor=0.9)
    assert first.passed and "no champion" in first.reason


def test_gate_needs_evidence() -> None:
    d = decide(["x"], ["x"], ["a", "b"], ["a"], ["a", "b"], min_holdout=1)
    assert not d.passed and "only 0 holdout" in d.reason
    assert score(["a", "b"], [None, "b"], {"a", "b"}).correct == 1  # unreadable counts as wrong
