"""``--recipe auto``: choose how much of the backbone to train, by measurement on the validation split.

How far the new images are from ImageNet decides how many stages are worth training (Yosinski et
al. 2014; Kornblith et al. 2019), and a user should not have to know it. So:

1. Candidates: the head alone, then the last 1, 2, 3, 4, 6, 8, ... backbone stages, as many as the
   compute budget allows. Their cost is an estimate that does not depend on the machine's load
   (multiply-accumulates and activations of the stages that train, per epoch, against one frozen
   pass over the data), so the same data and seed always give the same candidates and choice.
2. One pass over the images caches the tensor at every candidate's cut (training/cache.py).
3. Each candidate trains exactly as ``--trainable-stages N`` (``--recipe head`` for the head) would
   train it: from the same starting weights, with the same random draws, on its cut's cache. So the
   kept model is the one the best of those fixed flags would have given, and never worse than the
   head alone on the validation split. (Measured here and dropped: starting deeper candidates from
   the trained head with lower, discriminative learning rates for a third of the epochs, BatchNorm
   statistics kept or not: on Fashion-MNIST it stayed at the head's 0.86 where ``--trainable-stages 2``
   reached 0.88; re-estimating the BatchNorm statistics of the last stages is much of that gain.)
4. The model is the shallowest candidate within one standard error of the best (Breiman's "one standard
   error" rule): the candidates predict the same validation images, so the error is that of the paired
   difference of each image's right or wrong. On a small validation split a deeper candidate often wins by
   an image or two that say nothing (measured in the retraining loop on ants/bees: two of twelve
   candidates went one stage deeper on a dozen images, and one of them lost 3 points on truth), and a
   deeper model also varies more from one retraining to the next. Each candidate's score, epochs and
   seconds go into ``model.json`` (``recipe.auto``) and the run log.

Explicit ``--freeze-until`` / ``--trainable-stages`` win over ``auto``; so does anything that rules the
feature cache out (``--augment``, ``--frozen-bn train``, ``--no-feature-cache``), which leaves the head alone.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from graft.core.zoo import Stage, model_stages
from training.config import TrainConfig
from training.forward_cut import eval_mode
from training.freeze import FreezePlan, plan_freeze
from training.trainer import Best, Phase, Trainer, cache_possible

log = logging.getLogger(__name__)

# Cost of one activation element in multiply-accumulates: on the CPUs measured here, early high-resolution
# stages are bound by memory traffic, not arithmetic (EfficientNet-Lite0: 85% of the time, 30% of the MACs).
ACTIVATION_COST = 40.0


@dataclass
class Candidate:
    trainable_stages: int
    plan: FreezePlan
    cost: float  # estimated, in frozen passes over the train + val images


@dataclass
class Result:
    trainable_stages: int
    frozen_through: str | None
    val_accuracy: float
    val_loss: float
    best_epoch: int
    epochs_run: int
    seconds: float
    estimated_cost: float
    correct: tuple[bool, ...] = field(default=(), repr=False)  # each validation image, at the best epoch


def skip_reason(cfg: TrainConfig) -> str | None:
    """Why ``--recipe auto`` does not search for this config (None: it does)."""
    if cfg.freeze_until is not None or cfg.trainable_stages is not None:
        return "explicit --freeze-until / --trainable-stages"
    if not cache_possible(cfg):
        return "the feature cache is off (--augment, --frozen-bn train or --no-feature-cache): head only"
    return None


@torch.no_grad()
def stage_costs(model: nn.Module, stages: list[Stage], probe: torch.Tensor) -> dict[str, float]:
    """Per-image forward cost of each stage: multiply-accumulates of its convolutions and linear layers,
    plus ``ACTIVATION_COST`` per activation element its layers write."""
    owner = {m: s.name for s in stages for m in s.modules}
    costs = dict.fromkeys(owner.values(), 0.0)
    current: list[str] = []
    handles = [
        model.get_submodule(name).register_forward_pre_hook(lambda _m, _a, s=stage: current.append(s))
        for name, stage in owner.items()
    ]

    def count(module: nn.Module, _args: Any, out: Any) -> None:
        if not current or not isinstance(out, torch.Tensor) or not out.ndim:
            return
        layer = module if isinstance(module, nn.Conv2d | nn.Linear) else None  # a padded Conv2d has a child
        if layer is None and any(True for _ in module.children()):
            return
        macs = 0.0
        if layer is not None:
            positions = out.shape[2] * out.shape[3] if out.ndim == 4 else 1
            macs = float(layer.weight.numel() * positions)
        costs[current[-1]] += macs + ACTIVATION_COST * out.numel() / out.shape[0]

    handles += [m.register_forward_hook(count) for m in model.modules()]
    try:
        with eval_mode(model):
            model(probe)
    finally:
        for h in handles:
            h.remove()
    return costs


def candidates(trainer: Trainer, stages: list[Stage]) -> list[Candidate]:
    """Deeper candidates, shallowest first, while their estimated cost fits ``auto_budget``."""
    cfg = trainer.cfg
    probe = torch.zeros(1, 3, trainer.start.preprocessing.crop, trainer.start.preprocessing.crop)
    costs = stage_costs(trainer.model, stages, probe.to(trainer.rt.device))
    full = sum(costs.values())
    n_train, n_val = len(trainer.data.train), len(trainer.data.val)
    # forward + backward over the train images, forward over the val images, each fine-tuning epoch
    per_epoch = (3 * n_train + n_val) / ((n_train + n_val) * full)
    body = [s for s in stages if s.name != "head"]
    out: list[Candidate] = []
    spent = 0.0
    for depth in _ladder(len(body) - 1):  # "all" stages has nothing frozen to cache
        suffix = sum(costs[s.name] for s in body[-depth:]) + costs.get("head", 0.0)
        cost = cfg.epochs * suffix * per_epoch
        if spent + cost > cfg.auto_budget:
            break
        spent += cost
        out.append(Candidate(depth, plan_freeze(stages, trainable_stages=depth), cost))
    return out


def _ladder(most: int) -> list[int]:
    """Depths to try: every one up to 4, then each about 1.4x the last (1, 2, 3, 4, 6, 8, 11, 16, ...)."""
    depths: list[int] = []
    d = 1.0
    while round(d) <= most:
        if round(d) not in depths:
            depths.append(round(d))
        d = d + 1 if d < 4 else d * 1.4
    return depths


def paired_se(a: Result, b: Result) -> float:
    """Standard error of ``a``'s accuracy minus ``b``'s, from the images each got right or wrong."""
    n = len(a.correct)
    if n < 2 or len(b.correct) != n:
        return 0.0
    d = [int(x) - int(y) for x, y in zip(a.correct, b.correct, strict=True)]
    mean = sum(d) / n
    return math.sqrt(max(0.0, sum(v * v for v in d) / n - mean * mean) / (n - 1))


def choose(results: list[Result]) -> Result:
    """The shallowest candidate (``results`` go shallow to deep) within one standard error of the best.

    Loss is no tie-break: a deeper candidate has trained longer from the head's weights and is usually more
    confident, not better."""
    best = max(results, key=lambda r: r.val_accuracy)  # the first, i.e. shallowest, of equal scores
    return next(r for r in results if r.val_accuracy >= best.val_accuracy - paired_se(best, r) - 1e-12)


@dataclass
class _Start:
    """What every candidate starts from: the weights and the random number generator's state."""

    state: dict[str, torch.Tensor]
    rng: torch.Tensor

    @classmethod
    def of(cls, trainer: Trainer) -> _Start:
        return cls({k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, torch.get_rng_state())

    def trim(self, best: Best) -> Best:
        """``best`` holding only the tensors its run changed (every candidate's is kept until the choice)."""
        best.state = {k: v for k, v in best.state.items() if not torch.equal(v, self.state[k].to(v.device))}
        return best

    def restore(self, trainer: Trainer) -> None:
        trainer.model.load_state_dict(self.state)
        torch.set_rng_state(self.rng)
        trainer.best, trainer.history, trainer.epoch = Best(), [], 0


@dataclass
class _Kept:
    best: Best
    history: list[dict[str, Any]]
    epoch: int
    phase: Phase


def _result(trainer: Trainer, cand: Candidate, seconds: float) -> Result:
    return Result(
        trainable_stages=cand.trainable_stages,
        frozen_through=cand.plan.frozen[-1] if cand.plan.frozen else None,
        val_accuracy=round(trainer.best.accuracy, 6),
        val_loss=round(trainer.best.loss, 6),
        best_epoch=trainer.best.epoch,
        epochs_run=trainer.epoch,
        seconds=round(seconds, 2),
        estimated_cost=round(cand.cost, 3),
        correct=tuple(p == t for p, t in zip(trainer.best.val.preds, trainer.best.val.targets, strict=True)),
    )


@dataclass
class Outcome:
    phases: list[Phase]
    trainable_stages: int
    evidence: dict[str, Any]


def search(trainer: Trainer) -> Outcome:
    """Train the candidates, keep the best in ``trainer`` (its weights, history, best epoch)."""
    cfg = trainer.cfg
    stages = model_stages(trainer.model)
    head_plan = plan_freeze(stages)
    deeper = candidates(trainer, stages)
    start = _Start.of(trainer)  # before anything trains: the fixed flags' runs start from here too
    t0 = time.perf_counter()
    trainer.caches.fill([head_plan] + [c.plan for c in deeper])
    cache_seconds = time.perf_counter() - t0
    deeper = [c for c in deeper if trainer.caches.get(c.plan) is not None]
    trainer.total_epochs = cfg.epochs * (1 + len(deeper))
    log.info(
        "recipe auto: candidates head%s (estimated cost %.2f of a budget of %.2f frozen passes)",
        "".join(f", last {c.trainable_stages}" for c in deeper), sum(c.cost for c in deeper), cfg.auto_budget,
    )  # fmt: skip
    results: list[Result] = []
    runs: list[_Kept] = []
    for cand in [Candidate(0, head_plan, 0.0), *deeper]:
        start.restore(trainer)
        t0 = time.perf_counter()
        phase = Phase("head" if cand.trainable_stages == 0 else f"last-{cand.trainable_stages}", cand.plan,
                      cfg.epochs, cached=True)  # fmt: skip
        trainer.run_phase(phase)
        results.append(_result(trainer, cand, time.perf_counter() - t0))
        runs.append(_Kept(start.trim(trainer.best), trainer.history, trainer.epoch, phase))
    leader = choose(results)
    kept = runs[results.index(leader)]
    kept.best.state = {**start.state, **kept.best.state}
    trainer.model.load_state_dict(kept.best.state)
    trainer.best, trainer.history, trainer.epoch = kept.best, kept.history, kept.epoch
    _log_table(results, leader)
    evidence = {
        "chosen": {"trainable_stages": leader.trainable_stages, "frozen_through": leader.frozen_through},
        "rule": "the fewest trained stages within one standard error (paired, on the validation images) of the "
        "best validation accuracy",
        "budget": cfg.auto_budget,
        "cache_seconds": round(cache_seconds, 2),  # the one pass over the images that every candidate shares
        "candidates": [{k: v for k, v in asdict(r).items() if k != "correct"} for r in results],
    }
    return Outcome([kept.phase], leader.trainable_stages, evidence)


def _log_table(results: list[Result], leader: Result) -> None:
    for r in results:
        log.info(
            "recipe auto: %-8s val acc %.4f loss %.4f (best epoch %d of %d) %.1fs%s",
            "head" if r.trainable_stages == 0 else f"last {r.trainable_stages}",
            r.val_accuracy, r.val_loss, r.best_epoch, r.epochs_run, r.seconds, "  <- chosen" if r is leader else "",
        )  # fmt: skip
