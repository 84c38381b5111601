"""Several seeds for the head: train the head from ``head_seeds`` initialisations and average them.

Why: on a small dataset the head a run ends with depends on its random start, the order of the batches and
the epoch early stopping picked on a small validation split. Measured here on ants/bees (frozen MobileNetV2
features, nested training sets of 20 to 148 images, 20 orders): a candidate trained on a superset of the
champion's images was worse on the 153 validation photos by 1 point or more in 11 of 80 steps with one seed,
4 of 80 with the average of five (docs/gate.md). Averaging linear heads that share their input is exactly
averaging their logits, so the five make one ensemble in a single model of the same size and speed.

Only a head-only phase on the feature cache is averaged: there each seed costs a pass over cached tensors,
not over the images. Deeper recipes train the stages once (their weights would not average into an
ensemble), and a warm start's replicas keep the parent's head and differ in batch order and dropout.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from graft.core.zoo import find_head, model_stages
from training.features import feature_batches
from training.freeze import plan_freeze
from training.loop import eval_epoch
from training.runtime import seed_everything
from training.trainer import Best, Phase, Trainer

log = logging.getLogger(__name__)


def head_start(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The head before training: the parameters of a head-only plan and its modules' buffers, copied."""
    plan = plan_freeze(model_stages(trainer.model))
    modules = tuple(m for s in plan.trainable for m in s.modules)
    params = {p for s in plan.trainable for p in s.params}
    buffers = {n for n, _ in trainer.model.named_buffers() if any(n.startswith(m + ".") for m in modules)}
    state = trainer.model.state_dict()
    return {k: state[k].detach().clone() for k in sorted(params | buffers)}


def applies(trainer: Trainer, phase: Phase) -> str | None:
    """Why the seeds are not averaged for this phase (None: they are)."""
    if trainer.cfg.head_seeds <= 1:
        return "head_seeds is 1"
    if not phase.plan.head_only:
        return "the recipe trains backbone stages"
    if not phase.cached:
        return "no feature cache (each seed would be a pass over the images)"
    if trainer.rt.distributed:
        return "distributed training"
    return None


def average_heads(trainer: Trainer, phase: Phase, start: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    """Train ``head_seeds - 1`` more heads of ``phase`` from ``start`` (the head before any training) and
    keep the uniform average of all of them in ``trainer`` (weights and validation stats).

    Returns the evidence for ``model.json`` (each seed's validation accuracy and the average's), or None
    when the phase does not qualify."""
    cfg = trainer.cfg
    why = applies(trainer, phase)
    if why is not None:
        log.info("head seeds: not averaged (%s)", why)
        return None
    first = trainer.best
    states, scores, epochs = [_head_state(first, start)], [first.accuracy], [first.epoch]
    history, epoch = trainer.history, trainer.epoch
    trainer.total_epochs += (cfg.head_seeds - 1) * phase.epochs
    for k in range(1, cfg.head_seeds):
        restart(trainer, start, cfg.seed + k, fresh=cfg.init_from is None)
        trainer.run_phase(phase)
        states.append(_head_state(trainer.best, start))
        scores.append(trainer.best.accuracy)
        epochs.append(trainer.best.epoch)
    trainer.shuffle_seed = cfg.seed
    trainer.model.load_state_dict({**first.state, **mean_state(states)})
    val = _validate(trainer, phase)
    best = Best()
    best.update(first.epoch, val, trainer.model)
    trainer.best, trainer.history, trainer.epoch = best, history, epoch
    log.info(
        "head seeds: %d heads averaged, validation accuracy %s -> %.4f",
        cfg.head_seeds, ", ".join(f"{s:.4f}" for s in scores), val.accuracy,
    )  # fmt: skip
    return {
        "seeds": [cfg.seed + k for k in range(cfg.head_seeds)],
        "val_accuracy": [round(s, 6) for s in scores],
        "best_epochs": epochs,
        "averaged_val_accuracy": round(val.accuracy, 6),
        "averaged_val_loss": round(val.loss, 6),
    }


def _head_state(best: Best, start: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: best.state[k] for k in start}


def mean_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = torch.stack([s[key].float() for s in states]).mean(0).to(first.dtype)
        else:  # counters such as BatchNorm's num_batches_tracked
            out[key] = first
    return out


def restart(trainer: Trainer, start: dict[str, torch.Tensor], seed: int, fresh: bool) -> None:
    """The head as it was before training, a new random output layer unless warm-started, new batch order."""
    trainer.model.load_state_dict(start, strict=False)
    seed_everything(seed)
    if fresh:
        layer = find_head(trainer.model)[1]
        reset = getattr(layer, "reset_parameters", None)
        if callable(reset):
            reset()
    trainer.shuffle_seed = seed
    trainer.best, trainer.history, trainer.epoch = Best(), [], 0


@torch.no_grad()
def _validate(trainer: Trainer, phase: Phase) -> Any:
    cached = trainer.cache(phase)
    assert cached is not None  # applies() checked the phase runs on the cache
    batches = feature_batches(cached.val, cached.val_targets, 256, None, shuffle=False)
    return eval_epoch(cached.split.suffix, batches, trainer.loss_fn, trainer.rt, trainer.cfg.amp)
