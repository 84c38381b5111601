"""The loop benchmark's summary: what counts as a wrong decision, and which of those the truth set can tell."""

from __future__ import annotations

from bench._loop_sim import Round
from bench.loop_truth import by_chance, markdown, summarise


def _row(rnd: int, champ: float, cand: float, passed: bool, truth: tuple[int, int, float] | None) -> Round:
    row = Round("d", 0, rnd, 10 * rnd, 0.2, 0, champ, cand, round(cand - champ, 4), passed, 40, passed, 40, 0,
                4, 0.0, -0.05, 0.05, 0.5, "", cand if passed else champ, cand, "head", 1.0)  # fmt: skip
    if truth is not None:
        row.truth_cand_only, row.truth_champ_only, row.truth_p = truth
    return row


def test_a_worse_candidate_counts_as_a_wrong_promotion_and_only_a_significant_one_as_clear() -> None:
    rows = [
        _row(1, 0.90, 0.88, True, (1, 4, 0.375)),  # 2 points worse on truth, but 1 vs 4 images: noise
        _row(2, 0.88, 0.80, True, (0, 12, 0.00049)),  # 8 points worse, significant
        _row(3, 0.80, 0.85, False, (9, 1, 0.021)),  # better, significantly, and rejected
    ]
    s = summarise(rows)
    assert s["wrong_promotions"]["new"] == {"rounds": 2, "count": 2, "rate": 1.0}
    assert s["significant_on_truth"]["wrong_promotions"]["new"] == {"rounds": 1, "count": 1, "rate": 1.0}
    assert s["significant_on_truth"]["wrong_rejections"]["new"] == {"rounds": 1, "count": 1, "rate": 1.0}
    # served after each round: the first model 0.90, then 0.88 and 0.80 promoted, 0.85 rejected (0.80 stays)
    assert s["served"]["served_truth"]["mean_by_round"] == {0: 0.90, 1: 0.88, 2: 0.80, 3: 0.80}
    rows[1].holdout_share, rows[1].new_n = 0.31, 12  # another loop's round 2, for the ranges
    other = _row(2, 0.88, 0.80, True, None)
    s = summarise([*rows, other])
    assert s["holdout"][2] == {"uploads": 20, "share_min": 0.2, "share_max": 0.31, "fair_n_min": 12, "fair_n_max": 40}
    assert s["holdout"][1]["share_min"] == s["holdout"][1]["share_max"] == 0.2


def test_rows_of_runs_before_the_truth_comparison_are_left_out_of_the_clear_counts() -> None:
    s = summarise([_row(1, 0.90, 0.85, True, None)])
    assert s["wrong_promotions"]["new"]["count"] == 1
    assert s["significant_on_truth"]["wrong_promotions"]["new"]["rounds"] == 0
    assert "| n/a |" in markdown([_row(1, 0.90, 0.85, True, None)], {"d": s})
    assert "| 1/4 (0.38) |" in markdown([_row(1, 0.90, 0.88, True, (1, 4, 0.375))], {"d": s})


def test_by_chance_counts_the_equal_candidates_a_small_truth_set_would_call_worse() -> None:
    two_worse = _row(1, 0.9412, 0.9281, True, (0, 2, 0.5))  # 2 of 153 photos: -1.3 points
    five = _row(2, 0.9281, 0.9085, True, (1, 4, 0.375))  # -3 photos: -2.0 points
    same = _row(3, 0.9085, 0.9085, True, (0, 0, 1.0))
    chance = by_chance([two_worse, five, same])
    assert chance["truth_images"] == {"d": 153}, "read back from the row with the largest difference"
    # Equal models: P(both discordant photos go to the champion) = 1/4; P(c - b >= 2 of 5) = P(c >= 4) = 6/32.
    assert chance["expected_worse"] == round(0.25 + 6 / 32, 2) == chance["expected_better"]
    assert (chance["seen_worse"], chance["seen_better"], chance["rounds"]) == (2, 0, 3)
    five.truth_n = 10_000  # recorded sizes win; at 10,000 images 1 point is 100 photos, never reached by 5
    assert by_chance([five])["expected_worse"] == 0.0
    assert by_chance([_row(1, 0.9, 0.9, True, None)])["rounds"] == 0
    untold = by_chance([_row(1, 0.9, 0.9, True, (1, 1, 1.0))])  # an old row, equal on truth: size unknown
    assert untold["rounds"] == 0 and untold["truth_images"] == {}


def test_the_refit_alone_s_rejections_are_counted_against_truth() -> None:
    wrong = _row(1, 0.90, 0.89, False, (1, 3, 0.625))  # the averaged candidate 1 point worse ...
    wrong.own_truth, wrong.own_p_worse, wrong.own_rejected, wrong.wrong_new = 0.80, 0.004, True, 12  # ... alone 10
    kept = _row(2, 0.90, 0.91, True, (2, 1, 1.0))
    kept.own_truth, kept.own_p_worse = 0.91, 0.6
    plain = _row(3, 0.91, 0.92, True, (2, 1, 1.0))  # nothing averaged (a deeper recipe): not judged twice
    s = summarise([wrong, kept, plain])["unaveraged"]
    assert s == {"judged": 2, "rejected": 1, "rejected_truly_worse": 1, "rejected_alone_truly_worse": 1,
                 "rejected_poisoned": 1}  # fmt: skip
