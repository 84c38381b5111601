"""The data check's statistics and its choice of images (admin/domain/label_check.py), without a model:
known Fisher p-values, a batch of wrong labels flagged with exactly its samples, clean data and small excesses
left alone, and the first model's training images kept out of the baseline while its validation images count."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from admin.domain.label_check import MIN_EXCESS, CheckPlan, fisher_greater, judge_labels, plan, ranked
from admin.store.rows import SampleRef
from graft.core.manifest import Item
from tests.support.fakes import write_toy_card
from tests.support.images import image_folder


def test_fisher_matches_the_tea_tasting_values() -> None:
    # Fisher's lady tasting tea: 8 cups, 4 with milk first; all 4 right has p = 1/70, 3 or more 17/70.
    assert fisher_greater(4, 4, 0, 4) == pytest.approx(1 / 70)
    assert fisher_greater(3, 4, 1, 4) == pytest.approx(17 / 70)
    assert fisher_greater(0, 4, 4, 4) == pytest.approx(1.0)
    assert fisher_greater(3, 3, 0, 3) == pytest.approx(1 / 20)


@pytest.mark.parametrize(("k", "n", "m", "big_m"), [(20, 40, 3, 45), (2, 40, 3, 45), (7, 12, 0, 9), (1, 3, 5, 200)])
def test_fisher_matches_scipy(k: int, n: int, m: int, big_m: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    expected = stats.fisher_exact([[k, n - k], [m, big_m - m]], alternative="greater").pvalue
    assert math.isclose(fisher_greater(k, n, m, big_m), expected, rel_tol=1e-9)


def _ref(k: int, label: str, split: str = "train") -> SampleRef:
    return SampleRef(id=f"{k:064x}", label=label, split=split, path=Path(f"/s/{k}.png"), seq=k)  # type: ignore[arg-type]


def _plan(new: list[tuple[str, str | None]], old: list[tuple[str, str | None]]) -> tuple[CheckPlan, list[str | None]]:
    """(label, what the champion predicts) for the new samples and the older holdout images."""
    refs = [_ref(k, label) for k, (label, _) in enumerate(new)]
    items = [Item(Path(f"/h/{k}.png"), label, "holdout") for k, (label, _) in enumerate(old)]
    return CheckPlan(refs, items, len(refs), []), [p for _, p in new] + [p for _, p in old]


def test_a_batch_of_wrong_labels_is_flagged_with_exactly_its_samples() -> None:
    # 40 new "bees": 20 are ants (the champion says so) and 20 are bees, of which it misses 1 (its usual 5%);
    # 30 new "ants", 2 missed; older holdout: 40 of each label, 2 missed each.
    new = [("bees", "ants")] * 20 + [("bees", "bees")] * 19 + [("bees", "ants")] + [("ants", "ants")] * 28
    new += [("ants", "bees")] * 2
    old = [("bees", "bees")] * 38 + [("bees", "ants")] * 2 + [("ants", "ants")] * 38 + [("ants", "bees")] * 2
    chosen, preds = _plan(new, old)
    check = judge_labels(chosen, preds, "3", alpha=0.01)
    assert [t.label for t in check.flagged] == ["bees"]
    bees = next(t for t in check.labels if t.label == "bees")
    assert (bees.new, bees.disagreed, bees.baseline, bees.missed) == (40, 21, 40, 2) and bees.p < 1e-5
    assert bees.excess == pytest.approx(21 - 40 * 2 / 40)
    assert [s.id for s in check.suspects] == [f"{k:064x}" for k in [*range(20), 39]], "the disagreed, no more"
    assert {s.predicted for s in check.suspects} == {"ants"} and check.suspect_count == 21
    words = check.summary()
    assert "disagrees with 21 of 40 new 'bees' samples (52%, against 5% of older 'bees'" in words, words
    assert "21 sample(s) to review" in words
    assert check.as_dict()["flagged"] == ["bees"] and check.as_dict()["suspects"][0]["label"] == "bees"


def test_clean_new_samples_are_not_flagged() -> None:
    # The champion misses new samples about as often as old ones (3 of 40 against 2 of 40).
    new = [("bees", "bees")] * 37 + [("bees", "ants")] * 3 + [("ants", "ants")] * 40
    old = [("bees", "bees")] * 38 + [("bees", "ants")] * 2 + [("ants", "ants")] * 40
    check = judge_labels(*_plan(new, old), "3", alpha=0.01)
    assert check.flagged == [] and check.suspects == [] and check.checked == 80
    assert check.summary().startswith("data check: nothing unusual in 80 new sample(s)")


def test_a_significant_but_small_excess_is_not_a_batch() -> None:
    # 4 of 10 disagreed where it never misses: significant (p ~ 2e-6), but below the floor on the excess.
    new = [("bees", "ants")] * (MIN_EXCESS - 1) + [("bees", "bees")] * 6
    old = [("bees", "bees")] * 200
    check = judge_labels(*_plan(new, old), "3", alpha=0.01)
    (bees,) = check.labels
    assert bees.p < 0.01 and bees.excess == MIN_EXCESS - 1 and not bees.flagged
    # One more wrong label crosses it.
    new = [("bees", "ants")] * MIN_EXCESS + [("bees", "bees")] * 5
    assert [t.label for t in judge_labels(*_plan(new, old), "3", alpha=0.01).flagged] == ["bees"]


def test_no_older_images_no_verdict_and_unreadable_images_have_no_opinion() -> None:
    new = [("wasps", "ants")] * 20 + [("bees", None)] * 5 + [("bees", "bees")] * 2
    old = [("bees", "bees")] * 10
    check = judge_labels(*_plan(new, old), "3", alpha=0.01)
    wasps = next(t for t in check.labels if t.label == "wasps")
    bees = next(t for t in check.labels if t.label == "bees")
    assert wasps.disagreed == 20 and wasps.baseline == 0 and not wasps.flagged
    assert bees.new == 2, "the 5 unreadable new images are not counted"
    assert "no older 'wasps' holdout images to compare its new samples with" in check.notes


def test_holm_over_the_labels() -> None:
    # Two labels, each alone just under alpha: corrected for looking at two, neither is flagged.
    one = [("a", "b")] * 7 + [("a", "a")] * 5
    old_one = [("a", "a")] * 9
    (alone,) = judge_labels(*_plan(one, old_one), "3", alpha=0.01).labels
    raw = fisher_greater(7, 12, 0, 9)
    assert alone.p == pytest.approx(raw, rel=1e-2) and 0.005 < raw < 0.01 and alone.flagged
    two = one + [("b", "a")] * 7 + [("b", "b")] * 5
    old_two = old_one + [("b", "b")] * 9
    check = judge_labels(*_plan(two, old_two), "3", alpha=0.01)
    assert [t.p for t in check.labels] == pytest.approx([2 * raw, 2 * raw], rel=1e-2) and check.flagged == []


def test_plan_keeps_the_first_models_training_images_out_and_its_validation_images_in(tmp_path: Path) -> None:
    base = image_folder(tmp_path / "base", {"train": 3, "val": 4})
    run = tmp_path / "run"
    write_toy_card(run, ["ants", "bees"], 0.9, dataset_path=base)
    val = sorted((base / "val").rglob("*.png"))
    train = sorted((base / "train").rglob("*.png"))
    holdout = [Item(p, p.parent.name, "holdout") for p in [*val, *train]]
    new = [_ref(k, "bees") for k in range(7)] + [_ref(100 + k, "wasps") for k in range(3)]
    new_item = Item(new[0].path, "bees", "holdout")  # a new sample that went to the holdout: new, not baseline
    chosen = plan(new, [*holdout, new_item], run, ["ants", "bees"], cap=5)
    assert sorted(i.path for i in chosen.baseline) == val, "validation images in, training images and new out"
    assert [s.id for s in chosen.new] == [f"{k:064x}" for k in range(5)], "capped per label, by id; wasps unknown"
    assert chosen.new_samples == 7 and chosen.notes == []
    assert plan([], holdout, run, ["ants", "bees"], cap=5).images() == [], "nothing new: nothing to predict"
    # A model whose data cannot be listed gets no check (its training images could not be kept out).
    write_toy_card(tmp_path / "blind", ["ants", "bees"], 0.9)
    blind = plan(new, holdout, tmp_path / "blind", ["ants", "bees"], cap=5)
    assert blind.new == [] and "cannot be listed" in blind.notes[0]
    summary = judge_labels(blind, [], "3", alpha=0.01).summary()
    assert summary.startswith("data check: not run: the data the model at") and "lineage.dataset_path" in summary


def test_suspects_are_ranked_the_likeliest_wrong_label_first() -> None:
    """Label-quality order: the smallest probability the model gives the label a sample was uploaded with first;
    samples it could not score (unreadable) last, by id; every suspect kept, only the order changes."""
    new = [("bees", "ants")] * 6 + [("bees", "bees")] * 10
    old = [("bees", "bees")] * 20
    chosen, preds = _plan(new, old)
    check = judge_labels(chosen, preds, "3", alpha=0.05, min_excess=1)
    assert [s.id for s in check.suspects] == [f"{k:064x}" for k in range(6)], "id order before ranking"
    p_label = {f"{k:064x}": p for k, p in enumerate([0.30, 0.02, None, 0.45, 0.10, None])}
    asked: list[list[tuple[Path, str]]] = []

    def score(images: list[tuple[Path, str]]) -> list[list[float] | None]:
        asked.append(images)
        ids = [f"{int(p.stem):064x}" for p, _ in images]
        return [None if p_label[i] is None else [1 - p_label[i], p_label[i]] for i in ids]  # type: ignore[operator]

    paths = {r.id: r.path for r in chosen.new}
    out = ranked(check.suspects, paths, score)
    assert asked == [[(Path(f"/s/{k}.png"), "bees") for k in range(6)]], "the suspects' own files and labels"
    assert [int(s.id, 16) for s in out] == [1, 4, 0, 3, 2, 5]
    assert [s.label_probability for s in out] == [0.02, 0.10, 0.30, 0.45, None, None]
    assert out[0].confidence == pytest.approx(0.98) and out[-1].confidence is None
    with pytest.raises(ValueError, match="3 scores for 6 suspects"):
        ranked(check.suspects, paths, lambda images: [[0.5, 0.5]] * 3)
