"""Refit: once the validation split has made the run's choices, train the head again on every image.

The validation split chooses the trained depth (``--recipe auto``), each seed's best epoch and grades the run;
those choices need images the model did not train on. Once they are made, the images have done that job, and
holding a fifth of a small dataset out of training costs more than it buys. Measured here with a miniature of
the recipe (frozen MobileNetV2 features, the head alone, docs/benchmarks/gate.md part 6): training on every
image ended 0.5 points higher on ants/bees and 0.8 on Fashion-MNIST, and higher at every dataset size.

So each seed's head trains once more from its start, on training and validation tensors together, on the
schedule of the selection run and stopped at the epoch that run chose, with no early stopping (there is no
unseen image left to stop on); the heads are averaged as :mod:`training.seeds` averages them. The run's
validation metrics stay those of the selection run, and ``model.json`` says so (``recipe.refitted``): the served
weights trained on the validation images, so they cannot be graded on them. The gate never grades on them
either: the admin judges on its holdout, which no training run reads.

Like the seeds, only a head-only phase on the feature cache is refit: there it costs passes over cached
tensors. Deeper recipes would need passes over the images again, and are kept as selected.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from training.distill import average_with_champion, champion_head, teacher_outputs
from training.seeds import mean_state, restart
from training.trainer import Phase, Trainer

log = logging.getLogger(__name__)


def applies(trainer: Trainer, phase: Phase) -> str | None:
    """Why the head is not refit after this phase (None: it is)."""
    if not trainer.cfg.refit:
        return "refit is off"
    if not phase.plan.head_only:
        return "the recipe trains backbone stages"
    cached = trainer.cache(phase) if phase.cached else None
    if cached is None:
        return "no feature cache (a refit would be passes over the images)"
    if trainer.rt.distributed:
        return "distributed training"
    if len(cached.val) == 0:
        return "no validation images"
    return None


def refit_head(
    trainer: Trainer, phase: Phase, start: dict[str, torch.Tensor], soup: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Train the head of ``phase`` again from ``start`` on training and validation images together, once per
    seed of the selection run (``soup``: :func:`training.seeds.average_heads`' evidence, None for one seed),
    each for its chosen number of epochs, and keep their average in ``trainer.model``.

    ``trainer.best`` and ``trainer.history`` stay the selection run's. Returns the evidence for ``model.json``,
    or None when the phase does not qualify."""
    why = applies(trainer, phase)
    if why is not None:
        log.info("refit: not done (%s)%s", why, "; nothing distilled" if trainer.cfg.distill else "")
        return None
    cfg = trainer.cfg
    champion = champion_head(trainer, start)  # read once, for distillation and averaging alike
    teacher, distilled = teacher_outputs(trainer, phase, champion)
    seeds = soup["seeds"] if soup else [cfg.seed]
    epochs = soup["best_epochs"] if soup else [trainer.best.epoch]
    kept = trainer.best, trainer.history, trainer.epoch
    trainer.total_epochs += sum(epochs)
    states = []
    for seed, stop in zip(seeds, epochs, strict=True):
        restart(trainer, start, seed, fresh=cfg.init_from is None)
        refit = dataclasses.replace(
            phase, name=f"{phase.name}-refit", pooled=True, stop_after=max(1, stop), teacher=teacher
        )
        trainer.run_phase(refit)
        now = trainer.model.state_dict()
        states.append({k: now[k].detach().cpu().clone() for k in start})
    trainer.shuffle_seed = cfg.seed
    # Only the head trained (a head-only plan): the rest of the model is still the selected one.
    trainer.model.load_state_dict(mean_state(states), strict=False)
    trainer.best, trainer.history, trainer.epoch = kept
    cached = trainer.cache(phase)
    assert cached is not None  # applies() checked the phase runs on the cache
    images = len(cached.train) + len(cached.val)
    log.info("refit: %d head(s) trained again on %d training and validation images for %s epochs, averaged",
             len(states), images, ", ".join(map(str, epochs)))  # fmt: skip
    evidence: dict[str, Any] = {
        "images": images,
        "seeds": list(seeds),
        "epochs": list(epochs),
        "validation_metrics": "of the selection run: the refit weights trained on the validation images",
    }
    if distilled is not None:
        evidence["distilled"] = distilled
    if (averaged := average_with_champion(trainer, champion)) is not None:
        evidence["champion_average"] = averaged
    return evidence
