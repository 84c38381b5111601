"""Freezing early stages: which stages train, and keeping frozen BatchNorm statistics still."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from graft.core.errors import FreezeSpecError
from graft.core.zoo import Stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FreezePlan:
    stages: tuple[Stage, ...]
    frozen: tuple[str, ...]  # names of frozen stages, input side first

    @property
    def trainable(self) -> tuple[Stage, ...]:
        return tuple(s for s in self.stages if s.name not in self.frozen)

    @property
    def head_only(self) -> bool:
        return all(s.name in self.frozen for s in self.stages if s.name != "head")

    def describe(self) -> str:
        n_frozen = len(self.frozen)
        return (
            f"{n_frozen}/{len(self.stages)} stages frozen"
            + (f" (through {self.frozen[-1]})" if self.frozen else "")
            + f"; training {', '.join(s.name for s in self.trainable)}"
        )


def plan_freeze(
    stages: Sequence[Stage], freeze_until: str | None = None, trainable_stages: int | None = None
) -> FreezePlan:
    """Resolve the freezing request against the model's stages.

    ``freeze_until=NAME`` freezes the stem through stage NAME inclusive; ``trainable_stages=N`` trains
    the last N backbone stages; neither trains the head alone. The head always trains.
    """
    body = [s for s in stages if s.name != "head"]
    if freeze_until is not None:
        names = [s.name for s in body]
        if freeze_until not in names:
            # accept a module path inside a stage too (e.g. "features.3.conv")
            owner = next((s.name for s in body if any(freeze_until.startswith(m + ".") for m in s.modules)), None)
            if owner is None:
                raise FreezeSpecError(
                    f"--freeze-until {freeze_until!r} names no stage of this model; stages are: {', '.join(names)}"
                )
            freeze_until = owner
        cut = names.index(freeze_until) + 1
    elif trainable_stages is not None:
        if trainable_stages > len(body):
            raise FreezeSpecError(f"--trainable-stages {trainable_stages}: this model has only {len(body)} stages")
        cut = len(body) - trainable_stages
    else:
        cut = len(body)
    return FreezePlan(stages=tuple(stages), frozen=tuple(s.name for s in body[:cut]))


def apply_freeze(model: nn.Module, plan: FreezePlan) -> None:
    frozen_params = {p for s in plan.stages if s.name in plan.frozen for p in s.params}
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen_params)
    log.info("freezing: %s", plan.describe())


def set_train_mode(model: nn.Module, plan: FreezePlan, frozen_bn: str = "eval") -> None:
    """Training mode for the trainable stages; with ``frozen_bn == 'eval'`` everything else stays in eval.

    Eval mode for the frozen part keeps its BatchNorm running statistics fixed and turns off its
    dropout / stochastic depth, so the frozen prefix is a fixed function of the image (which is also
    what makes the feature cache exact). ``frozen_bn == 'train'`` is plain ``model.train()``.
    """
    if frozen_bn != "eval":
        model.train()
        return
    model.eval()
    for s in plan.trainable:
        for m in s.modules:
            model.get_submodule(m).train()
