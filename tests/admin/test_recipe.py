"""What a retraining trains with: the champion's choices, the service's defaults, the request; typed and checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from admin.domain.jobs import smoke_images
from admin.domain.recipe import RecipeOverrides, RetrainRequest, build_train_config, replayed
from admin.store.rows import ModelVersion
from graft.core.errors import ConfigInvalidError
from graft.core.manifest import Item
from training.config import TrainConfig, recipe_fields


def champion(recipe: dict[str, object]) -> ModelVersion:
    return ModelVersion(version="1", status="accepted", source="import", recipe=recipe, created_at="t", updated_at="t")


def build(recipe: dict[str, object] | None, defaults: dict[str, object], **request: object) -> TrainConfig:
    champ = champion(recipe) if recipe is not None else None
    return build_train_config(Path("/s/m.json"), Path("/s/run"), champ, defaults, RetrainRequest(**request))


def test_recipe_layers_champion_settings_and_request() -> None:
    old_card = {"backbone": "mobilenet_v2", "weights": "/w.pth", "lr": 0.001, "freeze_until": None,
                "stages": ["a"], "phases": [{}], "pretrained": {"source": "x"}, "augment": False}  # fmt: skip
    cfg = build(old_card, {"epochs": 3, "trainable_stages": 0}, epochs=5, overrides={"lr": 0.01})
    assert (cfg.backbone, cfg.weights, cfg.epochs, cfg.trainable_stages, cfg.lr) == (
        "mobilenet_v2", "/w.pth", 5, 0, 0.01)
    assert cfg.manifest == Path("/s/m.json") and cfg.output == Path("/s/run") and cfg.init_from is None
    assert build(old_card, {}).lr == 0.001, "the champion's recipe is replayed"
    assert build(None, {}).model_dump(exclude={"manifest", "output"}) == TrainConfig(
        manifest=Path("/s/m.json"), output=Path("/s/run")).model_dump(exclude={"manifest", "output"})


def test_only_the_champions_explicit_choices_are_replayed() -> None:
    card = TrainConfig(data=Path("d"), output=Path("o"), backbone="resnet18", lr=0.01).card_recipe()
    assert card["explicit"] == ["backbone", "lr"]
    assert replayed(champion(card)) == {"backbone": "resnet18", "weights": "imagenet", "lr": 0.01}
    cfg = build(card, {})
    assert cfg.lr == 0.01 and cfg.epochs == TrainConfig.model_fields["epochs"].default


def test_a_new_backbone_starts_from_its_own_imagenet_weights() -> None:
    card = {"backbone": "mobilenet_v2", "weights": "/w.pth", "explicit": ["backbone", "weights"]}
    assert build(card, {}, backbone="resnet18").weights == "imagenet"
    assert build(card, {}, backbone="resnet18", weights="none").weights == "none"


@pytest.mark.parametrize("field", ["output", "data", "manifest", "init_from", "teacher", "weights", "device", "outp"])
def test_paths_the_device_and_unknown_names_cannot_be_overridden(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetrainRequest.model_validate({"overrides": {field: "x"}})


def test_every_recipe_field_can_be_overridden_and_is_validated() -> None:
    assert set(RecipeOverrides.model_fields) == set(recipe_fields())
    assert {"momentum", "amp", "channels_last"} <= set(recipe_fields())
    assert build(None, {}, overrides={"momentum": 0.8}).momentum == 0.8
    with pytest.raises(ConfigInvalidError, match="momentum"):
        build(None, {}, overrides={"momentum": 1.5})
    with pytest.raises(ConfigInvalidError, match="freeze_until and trainable_stages"):
        build(None, {}, overrides={"freeze_until": "layer3", "trainable_stages": 1})
    with pytest.raises(ValueError, match="weights"):
        RetrainRequest.model_validate({"weights": "/etc/passwd"})


def test_smoke_images_spread_over_labels(tmp_path: Path) -> None:
    items = []
    for label in ("a", "b"):
        for i in range(3):
            p = tmp_path / f"{label}{i}.jpg"
            p.write_bytes(b"x")
            items.append(Item(p, label, "val"))
    picked = smoke_images([*items, Item(tmp_path / "gone.jpg", "a", "val")], ["a", "b"], 3)
    assert [p.name for p in picked] == ["a0.jpg", "b0.jpg", "a1.jpg"]
    assert smoke_images(items, ["c"], 3) == []


def test_the_auto_recipes_choice_is_decided_afresh_and_explicit_choices_are_replayed() -> None:
    # What graft train writes when auto chose 3 trainable stages: the choice is recorded, not explicit.
    auto_card = TrainConfig(data=Path("d"), output=Path("o"), lr=0.01).card_recipe()
    auto_card.update(trainable_stages=3, auto={"chosen": {"trainable_stages": 3}, "candidates": []})
    assert auto_card["recipe"] == "auto" and "trainable_stages" not in auto_card["explicit"]
    assert "trainable_stages" not in replayed(champion(auto_card)) and "recipe" not in replayed(champion(auto_card))
    cfg = build(auto_card, {})
    assert (cfg.recipe, cfg.trainable_stages, cfg.lr) == ("auto", None, 0.01), "auto decides again on the new data"
    # A user's explicit choices are replayed: --recipe head, --trainable-stages 2.
    head_card = TrainConfig(data=Path("d"), output=Path("o"), recipe="head").card_recipe()
    assert build(head_card, {}).recipe == "head"
    fixed_card = TrainConfig(data=Path("d"), output=Path("o"), trainable_stages=2).card_recipe()
    assert build(fixed_card, {}).trainable_stages == 2
    # ... and a request still overrides them
    to_auto = build(fixed_card, {}, overrides={"recipe": "auto"})
    assert (to_auto.recipe, to_auto.trainable_stages) == ("auto", None), "a recipe asked for drops replayed depths"
    assert build(fixed_card, {"recipe": "head"}).trainable_stages is None
    assert build(fixed_card, {}, overrides={"recipe": "head", "trainable_stages": 1}).trainable_stages == 1
    assert build(head_card, {}, overrides={"recipe": "auto"}).recipe == "auto"


def test_distilling_retrains_learn_from_the_champion_and_only_from_it() -> None:
    champ = ModelVersion(version="1", status="accepted", source="job", recipe={"backbone": "mobilenet_v2"},
                         created_at="t", updated_at="t", run_dir=Path("/store/champion-run"))  # fmt: skip
    cfg = build_train_config(Path("/s/m.json"), Path("/s/run"), champ, {}, RetrainRequest(overrides={"distill": 1.0}))
    assert cfg.distill == 1.0 and cfg.teacher == Path("/store/champion-run")
    plain = build_train_config(Path("/s/m.json"), Path("/s/run"), champ, {}, RetrainRequest())
    # averaging with the champion is the default, so the champion is the teacher; distillation stays off
    assert plain.distill == 0 and plain.champion_share == 0.5 and plain.teacher == Path("/store/champion-run")
    alone = RetrainRequest(overrides={"champion_share": 0})
    assert build_train_config(Path("/s/m.json"), Path("/s/run"), champ, {}, alone).teacher is None
    assert build(None, {}, overrides={"distill": 1.0}).teacher is None  # a first model has no champion
    for bad in (-1, 11):
        with pytest.raises(ConfigInvalidError, match="distill"):
            build_train_config(Path("/s/m.json"), Path("/s/run"), champ, {}, RetrainRequest(overrides={"distill": bad}))
    with pytest.raises(ValueError, match="distill"):
        RetrainRequest.model_validate({"overrides": {"distill": "a lot"}})
    averaged = build_train_config(Path("/s/m.json"), Path("/s/run"), champ, {},
                                  RetrainRequest(overrides={"champion_share": 0.5}))  # fmt: skip
    assert averaged.champion_share == 0.5 and averaged.teacher == Path("/store/champion-run")
    whole = RetrainRequest(overrides={"champion_share": 1})
    with pytest.raises(ConfigInvalidError, match="champion_share"):  # all of the champion is no retraining
        build_train_config(Path("/s/m.json"), Path("/s/run"), champ, {}, whole)
