"""Several seeds for the head (training/seeds.py): trained, averaged into one model, recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graft.core.artifact import read_card
from training import TrainConfig, fit

pytestmark = pytest.mark.slow


def _fit(tmp: Path, data: Path, **kw: object):
    base: dict[str, object] = {"data": data, "output": tmp, "max_per_class": 8, "epochs": 4, "seed": 3,
                               "backbone": "resnet18", "weights": "none", "recipe": "head"}  # fmt: skip
    base.update(kw)
    return fit(TrainConfig(**base))  # type: ignore[arg-type]


def test_head_seeds_are_averaged_into_the_saved_model(hymenoptera: Path, tmp_path: Path) -> None:
    one = _fit(tmp_path / "one", hymenoptera, head_seeds=1)
    three = _fit(tmp_path / "three", hymenoptera, head_seeds=3)
    evidence = read_card(three.run_dir).recipe["head_seeds_averaged"]
    assert evidence["seeds"] == [3, 4, 5] and len(evidence["val_accuracy"]) == 3
    # the run's headline is the averaged model's validation, which is what was saved
    assert three.val_accuracy == pytest.approx(evidence["averaged_val_accuracy"])
    assert "head_seeds_averaged" not in read_card(one.run_dir).recipe
    a = load_file(str(one.run_dir / "model.safetensors"))
    b = load_file(str(three.run_dir / "model.safetensors"))
    assert not torch.allclose(a["fc.weight"], b["fc.weight"])  # the first seed's head alone is not what was kept
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("fc."))  # the frozen backbone is untouched
    log = (three.run_dir / "train.log").read_text()
    assert "3 heads averaged" in log and "[main] epoch 4/4" in log


def test_a_deeper_recipe_trains_once(hymenoptera: Path, tmp_path: Path) -> None:
    run = _fit(tmp_path / "deep", hymenoptera, recipe="auto", trainable_stages=1, head_seeds=3, epochs=2)
    assert "head_seeds_averaged" not in read_card(run.run_dir).recipe
    assert "not averaged (the recipe trains backbone stages)" in (run.run_dir / "train.log").read_text()
