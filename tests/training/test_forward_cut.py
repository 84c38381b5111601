"""The feature cache without torch.fx: EfficientNet-Lite0 cut at a stage boundary through its own forward
gives the full forward's outputs, gradients and trained weights; a forward the cut would break is not cut."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from graft.core.zoo import Stage, create_model, find_head, model_stages
from tests.support.images import image_folder
from training import TrainConfig, fit
from training.features import split_model
from training.freeze import FreezePlan, apply_freeze, plan_freeze, set_train_mode


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    model, _, _ = create_model("efficientnet_lite0", 3, "imagenet")
    return model


def _batch(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def test_lite0_cannot_be_cut_by_fx_but_is_cut_through_its_forward(lite0: nn.Module) -> None:
    plan = plan_freeze(model_stages(lite0), trainable_stages=4)
    head = find_head(lite0)[0]
    assert split_model(lite0, plan, head) is None, "without a probe only fx is tried, and fx cannot cut Lite0"
    split = split_model(lite0, plan, head, _batch(2))
    assert split is not None and split.boundary == "output of _blocks.13"
    assert split.capture == ("output", "_blocks.13")


@pytest.mark.parametrize("depth", [2, 4, 8])
def test_the_forward_cut_gives_the_full_forwards_outputs_and_gradients(lite0: nn.Module, depth: int) -> None:
    plan = plan_freeze(model_stages(lite0), trainable_stages=depth)
    x = _batch(4)
    split = split_model(lite0, plan, find_head(lite0)[0], x[:2])
    assert split is not None
    apply_freeze(lite0, plan)
    with torch.no_grad():
        lite0.eval()
        assert torch.equal(split.suffix(split.prefix(x)), lite0(x))
        features = split.prefix(x)

    def run(forward: object) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # train mode: BatchNorm on batch statistics and drop-connect in the trained blocks, same random draws
        set_train_mode(lite0, plan)
        torch.manual_seed(7)
        out = forward()  # type: ignore[operator]
        lite0.zero_grad()
        out.square().sum().backward()
        grads = {n: p.grad.clone() for n, p in lite0.named_parameters() if p.grad is not None}
        return out.detach(), grads

    cut_out, cut_grads = run(lambda: split.suffix(features))
    full_out, full_grads = run(lambda: lite0(x))
    assert torch.equal(cut_out, full_out)
    assert cut_grads.keys() == full_grads.keys() and len(cut_grads) > 2
    assert all(torch.equal(cut_grads[n], full_grads[n]) for n in cut_grads)
    # the frozen stages really were skipped: none of their parameters got a gradient
    frozen = {p for s in plan.stages if s.name in plan.frozen for p in s.params}
    assert not frozen & cut_grads.keys()


def test_fx_still_cuts_what_it_can() -> None:
    model, _, _ = create_model("resnet18", 2, "none")
    split = split_model(model, plan_freeze(model_stages(model), trainable_stages=1), "fc", _batch(2))
    assert split is not None and isinstance(split.suffix, torch.fx.GraphModule)


class _Reshaping(nn.Module):
    """Not fx-traceable (a branch on a value), and its forward reshapes the first stage's output."""

    def __init__(self) -> None:
        super().__init__()
        self.a1 = nn.Conv2d(3, 8, 3, stride=8, padding=1)
        self.a2 = nn.Conv2d(8, 8, 3, padding=1)
        self.m = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a1(x)
        if x.sum() > 1e9:
            x = x * 0
        x = self.m(self.a2(x.reshape(x.shape[0], 8, 28, 28)))
        return self.fc(x.mean((2, 3)))


def test_a_forward_the_stand_in_breaks_is_not_cut() -> None:
    model = _Reshaping()
    stages = tuple(Stage(n, (f"{n}.weight", f"{n}.bias"), (n,)) for n in ("a1", "a2", "m"))
    stages += (Stage("head", ("fc.weight", "fc.bias"), ("fc",)),)
    # after a1 nothing is skipped, so the reshape sees the real tensor: an exact cut
    assert split_model(model, FreezePlan(stages, ("a1",)), "fc", _batch(2)) is not None
    # after a2, a1 is skipped and its 1x1 stand-in cannot be reshaped: the check refuses the cut
    assert split_model(model, FreezePlan(stages, ("a1", "a2")), "fc", _batch(2)) is None


@pytest.mark.slow
def test_lite0_partial_fine_tune_on_the_cache_gives_the_full_forwards_weights(tmp_path: Path) -> None:
    # _conv_head and _bn1 train on cached _blocks.15 outputs; one full batch per epoch, so BatchNorm sees the
    # same images either way; SGD keeps float rounding as rounding.
    data = image_folder(tmp_path / "data", {"train": 5, "val": 3})
    common = {"data": data, "max_per_class": 5, "epochs": 2, "batch_size": 64, "lr": 0.05, "optimizer": "sgd",
              "trainable_stages": 2, "seed": 0}  # fmt: skip
    cached = fit(TrainConfig(output=tmp_path / "a", **common))  # type: ignore[arg-type]
    full = fit(TrainConfig(output=tmp_path / "b", feature_cache=False, **common))  # type: ignore[arg-type]
    assert cached.used_feature_cache and not full.used_feature_cache
    log = (tmp_path / "a" / "train.log").read_text()
    assert "through its own forward" in log and "cached the output of _blocks.15" in log
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    original, _, _ = create_model("efficientnet_lite0", 2, "imagenet")
    assert not torch.equal(a["_conv_head.weight"], original.state_dict()["_conv_head.weight"])
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
