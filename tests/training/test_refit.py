"""The refit (training/refit.py): after selection, the head trains again on training and validation images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graft.core.artifact import read_card
from training import TrainConfig, fit
from training.data import collect_folder
from training.evaluate import predict_probabilities

pytestmark = pytest.mark.slow


def _fit(tmp: Path, data: Path, **kw: object):
    base: dict[str, object] = {"data": data, "output": tmp, "max_per_class": 8, "epochs": 6, "seed": 3,
                               "backbone": "resnet18", "weights": "none", "recipe": "head", "patience": 2}  # fmt: skip
    base.update(kw)
    return fit(TrainConfig(**base))  # type: ignore[arg-type]


def _val_images(data: Path) -> list[Path]:
    """The validation images the runs used (the same cap, by the same seed)."""
    return [Path(i.path) for i in collect_folder(data, seed=3, max_per_class=8).items if i.split == "val"]


def _val_loss(run: Path, images: list[Path]) -> float:
    probs, labels = predict_probabilities(run, images)
    truth = torch.tensor([labels.index(p.parent.name) for p in images])
    return float(torch.nn.functional.nll_loss(torch.tensor(probs).log(), truth))


def test_the_head_is_trained_again_on_validation_images_too(
    hymenoptera: Path, mobilenet_weights: Path, tmp_path: Path
) -> None:
    # ImageNet features: a head that learns, so what it trained on shows in its loss
    kw = {"backbone": "mobilenet_v2", "weights": str(mobilenet_weights), "head_seeds": 2}
    plain = _fit(tmp_path / "plain", hymenoptera, refit=False, **kw)
    refit = _fit(tmp_path / "refit", hymenoptera, **kw)
    card = read_card(refit.run_dir)
    evidence = card.recipe["refitted"]
    soup = card.recipe["head_seeds_averaged"]
    assert evidence["images"] == card.lineage.num_train + card.lineage.num_val == 32
    assert evidence["seeds"] == soup["seeds"] == [3, 4]
    assert evidence["epochs"] == soup["best_epochs"]  # each seed stops where its selection run was best
    assert "refitted" not in read_card(plain.run_dir).recipe
    # the selection is the same run either way, and the metrics stay the selection's
    assert refit.val_accuracy == plain.val_accuracy and refit.best_epoch == plain.best_epoch
    a = load_file(str(plain.run_dir / "model.safetensors"))
    b = load_file(str(refit.run_dir / "model.safetensors"))
    head = [k for k in a if k.startswith("classifier.")]
    assert head and not all(torch.allclose(a[k], b[k]) for k in head)
    assert all(torch.equal(a[k], b[k]) for k in a if k not in head)  # the frozen backbone is untouched
    # trained on them: the refit head fits the validation images better than the head selected on them
    images = _val_images(hymenoptera)
    assert len(images) == card.lineage.num_val
    assert _val_loss(refit.run_dir, images) < _val_loss(plain.run_dir, images)
    log = (refit.run_dir / "train.log").read_text()
    assert "refit: 2 head(s) trained again on 32 training and validation images" in log
    assert "[main-refit] epoch" in log


def test_a_deeper_recipe_is_not_refit(hymenoptera: Path, tmp_path: Path) -> None:
    run = _fit(tmp_path / "deep", hymenoptera, recipe="auto", trainable_stages=1, head_seeds=1, epochs=2)
    assert "refitted" not in read_card(run.run_dir).recipe
    assert "refit: not done (the recipe trains backbone stages)" in (run.run_dir / "train.log").read_text()
