"""Distillation in the refit (training/distill.py): a retrained head keeps the champion's right answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from graft.core.artifact import UNAVERAGED_DIR, read_card
from training import TrainConfig, fit
from training.data import collect_folder
from training.distill import focal_distillation
from training.evaluate import predict_probabilities


def test_the_loss_counts_only_what_the_teacher_got_right() -> None:
    teacher = torch.tensor([[3.0, -1.0], [2.0, 0.0]])
    student = torch.tensor([[-1.0, 2.0], [-1.0, 2.0]], requires_grad=True)
    targets = torch.tensor([0, 1])  # the teacher is right on the first image only
    loss = focal_distillation(student, teacher, targets, weight=1.0)
    loss.backward()
    assert loss > 0
    assert student.grad is not None
    assert torch.equal(student.grad[1], torch.zeros(2))  # the wrong answer is not taught
    assert student.grad[0, 0] < 0 < student.grad[0, 1]  # pulled towards the teacher's right answer
    assert focal_distillation(teacher.clone(), teacher, targets, 1.0) == 0  # agreeing costs nothing
    assert focal_distillation(student, teacher, torch.tensor([1, 1]), 1.0) == 0  # the teacher right nowhere
    assert torch.isclose(focal_distillation(student, teacher, targets, 3.0), 3 * loss)


def _fit(tmp: Path, data: Path, imagenet: Path, seed: int, **kw: object):
    base: dict[str, object] = {"data": data, "output": tmp, "max_per_class": 8, "epochs": 4, "seed": seed,
                               "backbone": "mobilenet_v2", "weights": str(imagenet), "recipe": "head",
                               "head_seeds": 1, "patience": 0}  # fmt: skip
    base.update(kw)
    return fit(TrainConfig(**base))  # type: ignore[arg-type]


def _disagreement(a: Path, b: Path, images: list[Path]) -> float:
    """Mean KL divergence of b's class probabilities from a's."""
    pa, pb = (torch.tensor(predict_probabilities(run, images)[0]) for run in (a, b))
    return float((pa * (pa.log() - pb.log())).sum(1).mean())


@pytest.mark.slow
def test_a_distilled_refit_stays_closer_to_its_champion(
    hymenoptera: Path, mobilenet_weights: Path, tmp_path: Path
) -> None:
    champion = _fit(tmp_path / "champion", hymenoptera, mobilenet_weights, seed=1).run_dir
    # Another seed: the retraining draws another split and another start, as a retraining with new data would.
    first = _fit(tmp_path / "plain", hymenoptera, mobilenet_weights, seed=5, distill=2.0)  # no teacher
    second = _fit(tmp_path / "kept", hymenoptera, mobilenet_weights, seed=5, distill=2.0, teacher=champion,
                  champion_share=0)  # distillation alone, not averaged as well  # fmt: skip
    plain, kept = first.run_dir, second.run_dir

    assert read_card(plain).recipe["refitted"]["distilled"] == {"skipped": "no champion (a first model)"}
    evidence = read_card(kept).recipe["refitted"]["distilled"]
    assert evidence["images"] == 32 and 0 < evidence["teacher_right"] <= 32
    assert evidence["weight"] == 2.0 and str(champion.resolve()) in evidence["teacher"]
    images = [Path(i.path) for i in collect_folder(hymenoptera, seed=5, max_per_class=8).items]
    assert _disagreement(champion, kept, images) < _disagreement(champion, plain, images)
    # the selection run is the same either way: only the refit learns from the champion
    assert second.val_accuracy == first.val_accuracy and second.best_epoch == first.best_epoch


@pytest.mark.slow
def test_a_champion_with_other_frozen_layers_is_not_distilled_from(
    hymenoptera: Path, mobilenet_weights: Path, tmp_path: Path
) -> None:
    other = _fit(tmp_path / "other", hymenoptera, mobilenet_weights, seed=1, weights="none", epochs=1).run_dir
    run = _fit(tmp_path / "run", hymenoptera, mobilenet_weights, seed=5, distill=1.0, teacher=other).run_dir
    why = read_card(run).recipe["refitted"]["distilled"]["skipped"]
    assert why.startswith("the champion's frozen layers differ from this run's")
    assert "distill: not done (the champion's frozen layers differ" in (run / "train.log").read_text()


@pytest.mark.slow
def test_a_champion_average_is_that_share_of_the_champions_head(
    hymenoptera: Path, mobilenet_weights: Path, tmp_path: Path
) -> None:
    from graft.core.artifact import load_model

    champion = _fit(tmp_path / "champion", hymenoptera, mobilenet_weights, seed=1).run_dir
    plain = _fit(tmp_path / "plain", hymenoptera, mobilenet_weights, seed=5).run_dir
    mixed = _fit(tmp_path / "mixed", hymenoptera, mobilenet_weights, seed=5, champion_share=0.25,
                 teacher=champion).run_dir  # fmt: skip
    evidence = read_card(mixed).recipe["refitted"]["champion_average"]
    assert evidence["champion_share"] == 0.25 and str(champion.resolve()) in evidence["teacher"]
    (c, _), (p, _), (m, _) = (load_model(run) for run in (champion, plain, mixed))
    cs, ps, ms = c.state_dict(), p.state_dict(), m.state_dict()
    head = [k for k in ms if not torch.equal(ps[k], cs[k])]
    assert head and all(k.startswith("classifier") for k in head), head  # only the trained head differs
    for k, v in ms.items():  # the same refit (the same seed), then a quarter of the champion's head
        want = 0.75 * ps[k] + 0.25 * cs[k] if v.is_floating_point() else ps[k]
        assert torch.allclose(v, want, atol=1e-6), k
    # the refit's own model is kept beside it for the gate: exactly the un-averaged refit of the same seed
    own, own_card = load_model(mixed / UNAVERAGED_DIR)
    assert own_card.labels == read_card(mixed).labels and "unaveraged" in own_card.recipe
    assert own_card.lineage == read_card(mixed).lineage  # the same data: the gate leaves out what it saw
    for k, v in own.state_dict().items():
        assert torch.allclose(v, ps[k], atol=1e-6), k
    assert not (plain / UNAVERAGED_DIR).exists()  # nothing averaged (no teacher), nothing kept
    first = _fit(tmp_path / "first", hymenoptera, mobilenet_weights, seed=5, champion_share=0.5).run_dir
    assert read_card(first).recipe["refitted"]["champion_average"] == {"skipped": "no champion (a first model)"}
    assert "champion_average" not in read_card(plain).recipe["refitted"]  # the default, unasked: nothing to say
    # a reused output folder loses an earlier run's un-averaged model when this run averages nothing
    again = _fit(mixed, hymenoptera, mobilenet_weights, seed=5, champion_share=0).run_dir
    assert not (again / UNAVERAGED_DIR).exists()
