"""End-to-end training on real ants/bees images: pretrained beats random, cache is exact, artifact round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graft.core.artifact import load_model, read_card
from training import TrainConfig, fit

pytestmark = pytest.mark.slow


def _cfg(tmp: Path, data: Path, **kw: object) -> TrainConfig:
    # the engine's own behaviour, head only unless a test asks for depth (the auto recipe: test_auto.py)
    base: dict[str, object] = {"data": data, "output": tmp, "max_per_class": 12, "epochs": 6, "seed": 0}
    base["recipe"] = "head"
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory: pytest.TempPathFactory, hymenoptera: Path, mobilenet_weights: Path):
    out = tmp_path_factory.mktemp("pretrained")
    return fit(_cfg(out, hymenoptera, backbone="mobilenet_v2", weights=str(mobilenet_weights), epochs=10))


def test_pretrained_beats_random_init_on_the_same_subset(pretrained_run, hymenoptera: Path, tmp_path: Path) -> None:
    scratch = fit(_cfg(tmp_path, hymenoptera, backbone="mobilenet_v2", weights="none", epochs=10))
    assert pretrained_run.used_feature_cache and scratch.used_feature_cache
    assert pretrained_run.val_accuracy >= 0.8
    assert pretrained_run.val_accuracy > scratch.val_accuracy + 0.15


def test_run_folder_describes_itself(pretrained_run) -> None:
    run = pretrained_run.run_dir
    for name in ("model.safetensors", "model.json", "metrics.json", "curves.png", "confusion_matrix.png", "train.log"):
        assert (run / name).is_file(), name
    card = read_card(run)
    assert card.labels == ["ants", "bees"] and card.num_classes == 2
    assert card.preprocessing.crop == 224 and card.preprocessing.mean == (0.485, 0.456, 0.406)
    assert json.loads((run / "model.json").read_text())["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert card.lineage.dataset_digest.startswith("sha256:")
    assert "sha256:5b27f501" in card.lineage.pretrained_weights
    assert card.lineage.num_train == 24 and card.lineage.num_val == 24
    assert card.recipe["frozen_stages"][-1] == "features.18"
    assert card.recipe["phases"][0]["feature_cache"] is True
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val_accuracy"] == card.metrics["val_accuracy"]
    assert set(metrics["per_class"]["ants"]) == {"precision", "recall", "f1", "support"}
    assert sum(map(sum, metrics["confusion_matrix"])) == 24
    assert "feature cache" in (run / "train.log").read_text()


def test_artifact_round_trips_to_the_same_predictions(pretrained_run, hymenoptera: Path) -> None:
    from graft.core.transforms import eval_transform
    from training.data import load_rgb

    model, card = load_model(pretrained_run.run_dir)
    files = sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[:6]
    x = torch.stack([eval_transform(card.preprocessing)(load_rgb(f)) for f in files])
    sd = load_file(str(pretrained_run.run_dir / "model.safetensors"))
    again, _ = load_model(pretrained_run.run_dir)
    assert all(torch.equal(sd[k], v) for k, v in again.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_feature_cache_gives_the_same_result_as_the_full_forward(hymenoptera: Path, tmp_path: Path) -> None:
    # Full-batch training makes the two paths see identical gradients (ResNet-18's head has no dropout).
    common = {"backbone": "resnet18", "weights": "none", "max_per_class": 6, "epochs": 3, "batch_size": 64, "lr": 0.05,
              "head_seeds": 1, "refit": False}  # seeds and the refit run on the cache only (seeds.py, refit.py)
    cached = fit(_cfg(tmp_path / "a", hymenoptera, **common))
    full = fit(_cfg(tmp_path / "b", hymenoptera, feature_cache=False, **common))
    assert cached.used_feature_cache and not full.used_feature_cache
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert not torch.equal(a["fc.weight"], torch.zeros_like(a["fc.weight"]))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_partial_freeze_caches_the_frozen_prefix_with_the_same_result(hymenoptera: Path, tmp_path: Path) -> None:
    # layer4 trains on cached layer3 outputs; BatchNorm in layer4 sees the same full batch either way.
    # SGD: its step is linear in the gradient, so float rounding stays rounding (Adam's normalised
    # step would blow up the noise of near-zero gradients).
    common = {
        "backbone": "resnet18", "weights": "none", "max_per_class": 5, "epochs": 2, "batch_size": 64, "lr": 0.05,
        "trainable_stages": 1, "optimizer": "sgd",
    }  # fmt: skip
    cached = fit(_cfg(tmp_path / "a", hymenoptera, **common))
    full = fit(_cfg(tmp_path / "b", hymenoptera, feature_cache=False, **common))
    assert cached.used_feature_cache and not full.used_feature_cache
    assert "cached the output of layer3" in (tmp_path / "a" / "train.log").read_text()
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert not torch.equal(a["layer4.1.bn2.running_mean"], torch.zeros_like(a["layer4.1.bn2.running_mean"]))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-4), k


def test_cpu_runs_are_repeatable(hymenoptera: Path, tmp_path: Path) -> None:
    kw = {"backbone": "efficientnet_lite0", "max_per_class": 5, "epochs": 3}
    fit(_cfg(tmp_path / "a", hymenoptera, **kw))
    fit(_cfg(tmp_path / "b", hymenoptera, **kw))
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_partial_unfreeze_with_head_warmup_trains_the_last_stage(
    hymenoptera: Path, mobilenet_weights: Path, tmp_path: Path
) -> None:
    common = {"backbone": "mobilenet_v2", "weights": str(mobilenet_weights), "max_per_class": 6, "lr_decay": 0.1}
    fit(_cfg(tmp_path / "warm", hymenoptera, trainable_stages=1, head_warmup_epochs=2, epochs=2, **common))
    phases = read_card(tmp_path / "warm").recipe["phases"]
    assert [p["name"] for p in phases] == ["head-warmup", "main"]
    # both phases train on cached features: the head on the pooled features, then features.18 + head
    # on the cached output of features.17
    assert phases[0]["feature_cache"] is True and phases[1]["feature_cache"] is True
    assert phases[1]["learning_rates"] == pytest.approx({"features.18": 3e-4, "head": 3e-3})
    history = json.loads((tmp_path / "warm" / "metrics.json").read_text())["history"]
    assert [h["phase"] for h in history] == ["head-warmup"] * 2 + ["main"] * 2
    # Without a warm-up every epoch trains features.18, so the best checkpoint has it trained (with one,
    # the best epoch may be a warm-up epoch).
    fit(_cfg(tmp_path / "run", hymenoptera, trainable_stages=1, epochs=2, **common))
    trained = load_file(str(tmp_path / "run" / "model.safetensors"))
    original = torch.load(mobilenet_weights, weights_only=True)
    assert torch.equal(trained["features.17.conv.0.0.weight"], original["features.17.conv.0.0.weight"])
    assert torch.equal(trained["features.17.conv.0.1.running_mean"], original["features.17.conv.0.1.running_mean"])
    assert not torch.equal(trained["features.18.0.weight"], original["features.18.0.weight"])
    assert not torch.equal(trained["features.18.1.running_mean"], original["features.18.1.running_mean"])


def test_early_stopping_stops_and_keeps_the_best(hymenoptera: Path, mobilenet_weights: Path, tmp_path: Path) -> None:
    res = fit(
        _cfg(tmp_path, hymenoptera, backbone="mobilenet_v2", weights=str(mobilenet_weights), epochs=40, patience=2,
             lr=0.05, max_per_class=6)
    )  # fmt: skip
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs_run"] < 40
    assert metrics["epochs_run"] - metrics["best_epoch"] == 2
    best = max(h["val_accuracy"] for h in metrics["history"])
    assert res.val_accuracy == pytest.approx(best)


def test_warm_start_grows_the_head_for_new_labels(pretrained_run, hymenoptera: Path, tmp_path: Path) -> None:
    from graft.core.manifest import Item, write_manifest
    from training.data import load_image_folder

    base = load_image_folder(hymenoptera, max_per_class=6)
    # a third class: bees photos relabelled, enough to check the head grows and old rows are kept
    extra = [Item(s.path, "wasps", s.split) for s in base.train[-3:] + base.val[-3:]]
    write_manifest([*base.train, *base.val, *extra], tmp_path / "m.json")
    fit(TrainConfig(manifest=tmp_path / "m.json", output=tmp_path / "run", init_from=pretrained_run.run_dir, epochs=1,
                    recipe="head"))  # fmt: skip
    card = read_card(tmp_path / "run")
    assert card.labels == ["ants", "bees", "wasps"] and card.backbone == "mobilenet_v2"
    assert card.lineage.parent_model is not None and str(pretrained_run.run_dir) in card.lineage.parent_model
    parent = load_file(str(pretrained_run.run_dir / "model.safetensors"))
    child = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert torch.equal(parent["features.5.conv.0.0.weight"], child["features.5.conv.0.0.weight"])
    assert child["classifier.1.weight"].shape == (3, 1280)
