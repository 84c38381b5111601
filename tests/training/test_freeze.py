"""Freezing invariants and discriminative learning rates, proven on a real training step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graft.core.errors import FreezeSpecError
from graft.core.zoo import build_model, model_stages
from training.config import TrainConfig
from training.freeze import apply_freeze, plan_freeze, set_train_mode
from training.optim import build_optimizer, build_schedule


def _step(model: nn.Module, plan, frozen_bn: str, lr: float = 0.1) -> None:
    cfg = TrainConfig(data="x", output="y", lr=lr, lr_decay=0.5, frozen_bn=frozen_bn)
    apply_freeze(model, plan)
    opt, _ = build_optimizer(model, plan, cfg)
    set_train_mode(model, plan, frozen_bn)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 0, 1]))
    opt.zero_grad()
    loss.backward()
    opt.step()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_frozen_params_and_bn_statistics_are_bit_identical_after_a_step() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 2)
    plan = plan_freeze(model_stages(model), freeze_until="layer3")
    before = _snapshot(model)
    _step(model, plan, "eval")
    after = model.state_dict()
    frozen_prefixes = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")
    frozen = [k for k in before if k.startswith(frozen_prefixes)]
    assert any(k.endswith("running_mean") for k in frozen)
    for k in frozen:
        assert torch.equal(before[k], after[k]), f"{k} moved although frozen"
    # the trainable part really trained: weights and its own BN statistics moved
    assert not torch.equal(before["layer4.0.conv1.weight"], after["layer4.0.conv1.weight"])
    assert not torch.equal(before["layer4.0.bn1.running_mean"], after["layer4.0.bn1.running_mean"])
    assert not torch.equal(before["fc.weight"], after["fc.weight"])


def test_frozen_bn_in_train_mode_lets_statistics_move_but_not_weights() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 2)
    plan = plan_freeze(model_stages(model), freeze_until="layer3")
    before = _snapshot(model)
    _step(model, plan, "train")
    after = model.state_dict()
    assert not torch.equal(before["layer1.0.bn1.running_mean"], after["layer1.0.bn1.running_mean"])
    assert torch.equal(before["layer1.0.bn1.weight"], after["layer1.0.bn1.weight"])
    assert torch.equal(before["layer1.0.conv1.weight"], after["layer1.0.conv1.weight"])


def test_freeze_until_is_inclusive_and_trainable_stages_counts_from_the_head() -> None:
    stages = model_stages(build_model("resnet18", 2))
    assert plan_freeze(stages, freeze_until="layer3").frozen == ("stem", "layer1", "layer2", "layer3")
    assert [s.name for s in plan_freeze(stages, trainable_stages=2).trainable] == ["layer3", "layer4", "head"]
    assert plan_freeze(stages).head_only
    # a module path inside a stage resolves to its stage
    assert plan_freeze(stages, freeze_until="layer2.1.conv2").frozen[-1] == "layer2"


def test_bad_freeze_requests_name_the_stages() -> None:
    stages = model_stages(build_model("resnet18", 2))
    with pytest.raises(FreezeSpecError, match="stages are: stem, layer1"):
        plan_freeze(stages, freeze_until="layer9")
    with pytest.raises(FreezeSpecError, match="only 5 stages"):
        plan_freeze(stages, trainable_stages=9)


def test_discriminative_learning_rates_land_in_the_optimizer() -> None:
    model = build_model("resnet18", 2)
    plan = plan_freeze(model_stages(model), trainable_stages=3)
    cfg = TrainConfig(data="x", output="y", lr=1e-2, lr_decay=0.5)
    apply_freeze(model, plan)
    opt, specs = build_optimizer(model, plan, cfg)
    lrs = {g["stage"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({"layer2": 1.25e-3, "layer3": 2.5e-3, "layer4": 5e-3, "head": 1e-2})
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.layer1[0].conv1.weight) not in in_opt
    assert id(model.layer4[0].conv1.weight) in in_opt
    # no weight decay on biases / norm scales
    assert all(g["weight_decay"] == 0 for g in opt.param_groups if all(p.ndim == 1 for p in g["params"]))
    assert [s.stage for s in specs] == ["layer2", "layer3", "layer4", "head"]


def test_step_schedule_drops_by_gamma_every_n_epochs() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_schedule(opt, "step", total_steps=30, warmup_steps=0, steps_per_epoch=2, step_epochs=7, gamma=0.1)
    seen = []
    for _ in range(30):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[13] == pytest.approx(1.0) and seen[14] == pytest.approx(0.1) and seen[28] == pytest.approx(0.01)


@pytest.mark.parametrize("kind", ["cosine", "onecycle"])
def test_schedules_warm_up_then_decay(kind: str) -> None:
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 0.1}, {"params": [nn.Parameter(torch.zeros(1))], "lr": 0.01}])
    sched = build_schedule(opt, kind, total_steps=100, warmup_steps=10)
    seen = []
    for _ in range(100):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    head = [s[0] for s in seen]
    peak = max(range(100), key=lambda i: head[i])
    assert 5 <= peak <= 12
    assert head[0] < head[peak] and head[-1] < head[peak] / 10
    # the ratio between groups is kept throughout
    assert all(abs(a / b - 10) < 1e-6 for a, b in seen)
