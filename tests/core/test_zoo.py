"""The zoo: names, pretrained loading, head swap, stages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from graft.core.errors import BackboneError, WeightsError
from graft.core.zoo import build_model, create_model, find_head, list_backbones, model_stages


def test_zoo_lists_every_torchvision_classifier_and_lite0() -> None:
    names = list_backbones()
    for n in ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny"):
        assert n in names
    assert "efficientnet_lite0" in names


def test_unknown_backbone_is_a_clear_error() -> None:
    with pytest.raises(BackboneError, match="graft backbones"):
        create_model("resnet_19", 2, "none")


def test_lite0_imagenet_weights_load_offline_from_the_package() -> None:
    model, pre, report = create_model("efficientnet_lite0", 3, "imagenet")
    assert report.dropped == ["_fc.bias", "_fc.weight"]
    assert "new label set" in report.reason
    assert pre.mean == (0.498, 0.498, 0.498)
    assert find_head(model)[1].out_features == 3


def test_local_state_dict_loads_strictly_and_drops_only_the_head(mobilenet_weights: Path) -> None:
    model, _, report = create_model("mobilenet_v2", 2, str(mobilenet_weights))
    sd = torch.load(mobilenet_weights, weights_only=True)
    assert torch.equal(model.state_dict()["features.0.0.weight"], sd["features.0.0.weight"])
    assert torch.equal(model.state_dict()["features.18.1.running_var"], sd["features.18.1.running_var"])
    assert report.dropped == ["classifier.1.bias", "classifier.1.weight"]
    assert model.state_dict()["classifier.1.weight"].shape == (2, 1280)


def test_mismatched_weights_name_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(build_model("resnet18", 1000).state_dict(), path)
    with pytest.raises(WeightsError) as e:
        create_model("mobilenet_v2", 2, str(path))
    msg = str(e.value)
    assert "missing" in msg and "features.0.0.weight" in msg
    assert "unexpected" in msg and "bn1.weight" in msg


def test_shape_mismatch_is_named(tmp_path: Path) -> None:
    sd = build_model("resnet18", 1000).state_dict()
    sd["layer1.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"layer1\.0\.conv1\.weight \(1, 1, 1, 1\)"):
        create_model("resnet18", 2, str(path))


def test_missing_weights_file_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="'imagenet', 'none' or a state_dict path"):
        create_model("resnet18", 2, str(tmp_path / "nope.pth"))


@pytest.mark.parametrize(
    ("name", "first", "last_body"),
    [
        ("resnet18", "stem", "layer4"),
        ("mobilenet_v2", "features.0", "features.18"),
        ("efficientnet_b0", "features.0", "features.8"),
        ("efficientnet_lite0", "stem", "_bn1"),
        ("convnext_tiny", "features.0", "features.7"),
    ],
)
def test_stages_cover_every_parameter_in_order(name: str, first: str, last_body: str) -> None:
    model = build_model(name, 4)
    stages = model_stages(model)
    names = [s.name for s in stages]
    assert names[0] == first and names[-2] == last_body and names[-1] == "head"
    flat = [p for s in stages for p in s.params]
    assert sorted(flat) == sorted(n for n, _ in model.named_parameters())
    assert len(flat) == len(set(flat))
