"""``--recipe auto``: it measures candidate depths on the validation split, keeps the best, and says so in
model.json; explicit depth flags and ``--recipe head`` keep today's behaviour."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from graft.core.artifact import read_card
from graft.core.zoo import create_model, model_stages
from tests.support.images import image_folder
from training import TrainConfig, fit
from training.auto import _ladder, skip_reason, stage_costs


def _cfg(tmp: Path, data: Path, **kw: Any) -> TrainConfig:
    return TrainConfig(data=data, output=tmp, **{"epochs": 6, "batch_size": 8, "seed": 0, **kw})


def _auto(run: Path) -> dict[str, Any]:
    recipe: dict[str, Any] = read_card(run).recipe
    return recipe


def test_explicit_depth_flags_and_the_cache_being_off_skip_the_search() -> None:
    base = {"data": Path("d"), "output": Path("o")}
    assert skip_reason(TrainConfig(**base)) is None
    assert "explicit" in str(skip_reason(TrainConfig(**base, trainable_stages=2)))
    assert "explicit" in str(skip_reason(TrainConfig(**base, freeze_until="layer3")))
    assert "feature cache" in str(skip_reason(TrainConfig(**base, augment=True)))
    assert TrainConfig(**base).recipe == "auto", "auto is the default recipe"


def test_depths_tried_grow_by_steps_then_geometrically() -> None:
    assert _ladder(19) == [1, 2, 3, 4, 6, 8, 11, 15]
    assert _ladder(2) == [1, 2] and _ladder(0) == []


def test_stage_costs_follow_the_network() -> None:
    model, _, _ = create_model("efficientnet_lite0", 2, "none")
    stages = model_stages(model)
    costs = stage_costs(model, stages, torch.zeros(1, 3, 224, 224))
    assert set(costs) == {s.name for s in stages}
    assert all(c >= 0 for c in costs.values()) and costs["head"] < costs["_conv_head"] < costs["_blocks.1"]


def _shapes(root: Path, per_class: int, seed: int = 0) -> Path:
    """``root/{train,val}/{disk,square}/*.png``: a bright disk or a dark square on grey, moved and resized."""
    gen = torch.Generator().manual_seed(seed)
    for split in ("train", "val"):
        for label in ("disk", "square"):
            out = root / split / label
            out.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                x, y, r = (int(v) for v in torch.randint(18, 46, (3,), generator=gen))
                r = 8 + r % 6
                img = Image.new("RGB", (64, 64), (128, 128, 128))
                draw = ImageDraw.Draw(img)
                if label == "disk":
                    draw.ellipse((x - r, y - r, x + r, y + r), fill=(250, 250, 250))
                else:
                    draw.rectangle((x - r, y - r, x + r, y + r), fill=(5, 5, 5))
                img.save(out / f"{i}.png")
    return root


def _digits(root: Path, per_class: int, classes: tuple[int, ...] = (1, 4, 7, 9)) -> Path:
    """scikit-learn's bundled 8x8 handwritten digits (BSD-3-Clause) as ``train``/``val`` PNG folders."""
    datasets = pytest.importorskip("sklearn.datasets", reason="the digits come with scikit-learn ('make setup')")
    import numpy as np

    digits = datasets.load_digits()
    for k in classes:
        idx = np.flatnonzero(digits.target == k)
        for split, chosen in (("train", idx[:per_class]), ("val", idx[per_class : 2 * per_class])):
            (root / split / str(k)).mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (digits.images[i] * 255 / 16).round().astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(root / split / str(k) / f"{i}.png")
    return root


@pytest.mark.slow
def test_auto_trains_deeper_where_frozen_imagenet_features_fall_short(tmp_path: Path) -> None:
    # 8x8 grey digits blown up to 224 pixels are nothing like ImageNet's photos: a linear head on the frozen
    # features confuses 1/4/7/9 more often than a network whose last stages adapt (measured here: head 0.84,
    # last 2 stages 0.91, last 3 0.92 on these 64 validation digits)
    data = _digits(tmp_path / "data", 16)
    fit(_cfg(tmp_path / "run", data, epochs=15))
    auto = _auto(tmp_path / "run")["auto"]
    scores = {c["trainable_stages"]: c["val_accuracy"] for c in auto["candidates"]}
    chosen = auto["chosen"]["trainable_stages"]
    assert chosen > 0, scores
    assert scores[chosen] >= scores[0] + 0.05, scores


@pytest.mark.slow
def test_head_only_is_kept_where_the_head_suffices(tmp_path: Path) -> None:
    # bright disks against dark squares: ImageNet features separate them linearly, the head alone gets every
    # validation image right, and no deeper candidate can do better, so the head stays
    data = _shapes(tmp_path / "data", 8)
    fit(_cfg(tmp_path / "run", data, auto_budget=0.5))
    recipe = _auto(tmp_path / "run")
    scores = {c["trainable_stages"]: c["val_accuracy"] for c in recipe["auto"]["candidates"]}
    assert scores[0] == 1.0 and len(scores) > 1
    assert recipe["auto"]["chosen"]["trainable_stages"] == 0 and recipe["trainable_stages"] == 0
    assert recipe["frozen_stages"] == [s for s in recipe["stages"] if s != "head"]


@pytest.mark.slow
def test_the_choice_and_its_evidence_land_in_model_json_and_the_log(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "data", {"train": 6, "val": 4})
    fit(_cfg(tmp_path / "a", data, auto_budget=0.5))
    recipe = _auto(tmp_path / "a")
    auto = recipe["auto"]
    assert recipe["recipe"] == "auto" and "recipe" not in recipe["explicit"]
    assert "trainable_stages" not in recipe["explicit"], "the choice is not the user's: a retraining decides again"
    depths = [c["trainable_stages"] for c in auto["candidates"]]
    assert depths[0] == 0 and depths == sorted(depths) and len(depths) >= 3
    for c in auto["candidates"]:
        assert {"val_accuracy", "val_loss", "seconds", "epochs_run", "best_epoch", "estimated_cost"} <= c.keys()
    best = max(c["val_accuracy"] for c in auto["candidates"])
    chosen = auto["chosen"]["trainable_stages"]
    assert "one standard error" in auto["rule"]
    score = next(c["val_accuracy"] for c in auto["candidates"] if c["trainable_stages"] == chosen)
    assert chosen <= min(c["trainable_stages"] for c in auto["candidates"] if c["val_accuracy"] == best)
    assert score >= best - 0.5, "within one standard error of the best (at most half the images, with 8)"
    assert recipe["trainable_stages"] == chosen and len(recipe["frozen_stages"]) == len(recipe["stages"]) - 1 - chosen
    assert sum(c["estimated_cost"] for c in auto["candidates"]) <= auto["budget"]
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    averaged = recipe.get("head_seeds_averaged")
    assert metrics["val_accuracy"] == (averaged["averaged_val_accuracy"] if averaged else score)
    log = (tmp_path / "a" / "train.log").read_text()
    assert "recipe auto: candidates head, last 1" in log and "<- chosen" in log
    # deterministic on the CPU: the same seed gives the same choice and the same weights
    fit(_cfg(tmp_path / "b", data, auto_budget=0.5))
    again = _auto(tmp_path / "b")["auto"]
    strip = [{k: v for k, v in c.items() if k != "seconds"} for c in auto["candidates"]]
    assert strip == [{k: v for k, v in c.items() if k != "seconds"} for c in again["candidates"]]
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # each candidate is trained exactly as its fixed flag would train it: the kept model is that run's model
    fixed = {"recipe": "head"} if chosen == 0 else {"trainable_stages": chosen}
    fit(_cfg(tmp_path / "fixed", data, **fixed))
    c = load_file(str(tmp_path / "fixed" / "model.safetensors"))
    assert all(torch.equal(a[k], c[k]) for k in a)
    fixed_history = json.loads((tmp_path / "fixed" / "metrics.json").read_text())["history"]
    assert [{**h, "phase": ""} for h in fixed_history] == [{**h, "phase": ""} for h in metrics["history"]]


@pytest.mark.slow
def test_explicit_flags_and_recipe_head_train_as_asked(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "data", {"train": 3, "val": 2})
    fit(_cfg(tmp_path / "head", data, recipe="head", epochs=2))
    head = _auto(tmp_path / "head")
    assert "auto" not in head and head["explicit"] == ["batch_size", "epochs", "recipe", "seed"]
    assert [p["name"] for p in head["phases"]] == ["main"] and head["phases"][0]["frozen_stages"] == 19
    fit(_cfg(tmp_path / "fixed", data, trainable_stages=1, epochs=2))
    fixed = _auto(tmp_path / "fixed")
    assert fixed["auto"] == {"skipped": "explicit --freeze-until / --trainable-stages"}
    assert fixed["trainable_stages"] == 1 and "trainable_stages" in fixed["explicit"]
    assert fixed["phases"][0]["frozen_stages"] == 18 and fixed["phases"][0]["feature_cache"] is True


def _result(depth: int, correct: list[bool]) -> Any:
    from training.auto import Result

    return Result(depth, None, sum(correct) / len(correct), 0.0, 1, 1, 0.0, 0.0, tuple(correct))


def test_a_deeper_candidate_must_win_by_more_than_one_standard_error() -> None:
    from training.auto import choose, paired_se

    head = _result(0, [True] * 16 + [False] * 4)
    # one image more, out of 20: the paired difference's standard error is 0.05, the head stays
    one_more = _result(1, [True] * 17 + [False] * 3)
    assert paired_se(one_more, head) == pytest.approx(0.05)
    assert choose([head, one_more]) is head
    # four images more, none lost: far beyond the noise, the deeper one is chosen
    four_more = _result(2, [True] * 20)
    assert choose([head, one_more, four_more]) is four_more
    # a tie between depths keeps the shallowest
    assert choose([head, _result(1, [True] * 16 + [False] * 4)]) is head
