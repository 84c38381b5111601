"""Optimiser and schedule: discriminative learning rates per stage, warm-up, cosine or one-cycle."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from training.config import TrainConfig
from training.freeze import FreezePlan


@dataclass(frozen=True)
class GroupSpec:
    stage: str
    lr: float
    num_params: int


def stage_learning_rates(plan: FreezePlan, lr: float, decay: float) -> list[GroupSpec]:
    """The head gets ``lr``; each stage further from the head gets ``decay`` times the next one's."""
    trainable = list(plan.trainable)
    specs = []
    for distance, stage in enumerate(reversed(trainable)):
        specs.append(GroupSpec(stage.name, lr * decay**distance, len(stage.params)))
    return list(reversed(specs))


def build_optimizer(
    model: nn.Module, plan: FreezePlan, cfg: TrainConfig
) -> tuple[torch.optim.Optimizer, list[GroupSpec]]:
    params = dict(model.named_parameters())
    specs = stage_learning_rates(plan, cfg.lr, cfg.lr_decay)
    groups = []
    by_stage = {s.name: s for s in plan.stages}
    for spec in specs:
        stage_params = [params[n] for n in by_stage[spec.stage].params if params[n].requires_grad]
        # No weight decay on biases and norm scales: the usual timm/fastai convention.
        decay = [p for p in stage_params if p.ndim > 1]
        no_decay = [p for p in stage_params if p.ndim <= 1]
        for ps, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
            if ps:
                groups.append({"params": ps, "lr": spec.lr, "weight_decay": wd, "stage": spec.stage})
    opt: torch.optim.Optimizer
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    return opt, specs


def build_schedule(
    opt: torch.optim.Optimizer,
    kind: str,
    total_steps: int,
    warmup_steps: int,
    steps_per_epoch: int = 1,
    step_epochs: int = 7,
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule. Cosine, step and constant get a linear warm-up; one-cycle has its own.

    ``step`` multiplies the learning rate by ``gamma`` every ``step_epochs`` epochs (the PyTorch
    transfer-learning tutorial's StepLR(7, 0.1)).
    """
    total_steps = max(1, total_steps)
    if kind == "onecycle":
        max_lrs = [g["lr"] for g in opt.param_groups]
        pct = min(0.5, max(warmup_steps / total_steps, 1 / total_steps))
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lrs, total_steps=total_steps, pct_start=pct)

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        if kind == "step":
            return float(gamma ** (step // max(1, steps_per_epoch * step_epochs)))
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
