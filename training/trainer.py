"""The state of one training run and its phases: model, loaders, feature caches, the best epoch, history."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

from graft.core.transforms import eval_transform, train_transform
from graft.core.zoo import find_head, model_stages
from training.cache import Cached, FeatureCaches
from training.config import TrainConfig
from training.data import DatasetSplit, ImageDataset, class_weights, collate
from training.distill import focal_distillation
from training.distributed import RankBatchSampler
from training.features import feature_batches
from training.freeze import FreezePlan, apply_freeze, plan_freeze, set_train_mode
from training.loop import EpochStats, eval_epoch, train_epoch
from training.optim import GroupSpec, build_optimizer, build_schedule
from training.runtime import Runtime
from training.start import Start

log = logging.getLogger(__name__)


@dataclass
class Phase:
    name: str
    plan: FreezePlan
    epochs: int
    cached: bool = False
    groups: list[GroupSpec] = field(default_factory=list)
    # A refit (training/refit.py): train on the training and validation tensors together, and stop after
    # ``stop_after`` epochs of the ``epochs``-long schedule, with no early stopping.
    pooled: bool = False
    stop_after: int | None = None
    # The champion's logits on the pooled tensors, row for row: the refit distills from them (training/distill.py).
    teacher: torch.Tensor | None = None


class Best:
    """Tracks the best validation epoch and keeps a copy of its weights in memory."""

    def __init__(self) -> None:
        self.accuracy = -1.0
        self.loss = math.inf
        self.epoch = 0
        self.state: dict[str, torch.Tensor] = {}
        self.val = EpochStats(math.inf, 0.0, 0)

    def update(self, epoch: int, val: EpochStats, model: nn.Module) -> bool:
        better = val.accuracy > self.accuracy or (val.accuracy == self.accuracy and val.loss < self.loss)
        if better:
            self.accuracy, self.loss, self.epoch, self.val = val.accuracy, val.loss, epoch, val
            self.state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return better


def cache_possible(cfg: TrainConfig) -> bool:
    """The frozen prefix is a fixed function of the image: eval mode and no random augmentation."""
    return cfg.feature_cache and cfg.frozen_bn == "eval" and not cfg.augment


def cache_allowed(cfg: TrainConfig, plan: FreezePlan) -> bool:
    return cache_possible(cfg) and bool(plan.frozen)


def fixed_phases(cfg: TrainConfig, start: Start) -> list[Phase]:
    stages = model_stages(start.model)
    plan = plan_freeze(stages, cfg.freeze_until, cfg.trainable_stages)
    phases = []
    if cfg.head_warmup_epochs and not plan.head_only:
        head_plan = plan_freeze(stages)
        phases.append(Phase("head-warmup", head_plan, cfg.head_warmup_epochs, cache_allowed(cfg, head_plan)))
    phases.append(Phase("main", plan, cfg.epochs, cache_allowed(cfg, plan)))
    return phases


def _loaders(
    cfg: TrainConfig, data: DatasetSplit, rt: Runtime, pre: Any, augment: bool
) -> tuple[DataLoader, DataLoader]:
    train_items, val_items = data.index(data.train), data.index(data.val)
    train_ds = ImageDataset(train_items, train_transform(pre, augment), pre.background)
    val_ds = ImageDataset(val_items, eval_transform(pre), pre.background)
    g = torch.Generator().manual_seed(cfg.seed)
    sampler: Any = None
    if cfg.balance == "sampler":
        w = class_weights([t for _, t in train_items], len(data.labels))
        sampler = WeightedRandomSampler([float(w[t]) for _, t in train_items], len(train_items), generator=g)
    common: dict[str, Any] = {"batch_size": cfg.batch_size, "num_workers": cfg.num_workers, "collate_fn": collate}
    common["pin_memory"] = rt.cuda
    if rt.distributed:  # this rank's slice of each batch a one-process run would draw (training/distributed.py)
        sampler = sampler or RandomSampler(train_ds, generator=g)
        batches = RankBatchSampler(sampler, cfg.batch_size * rt.world_size, rt.rank, rt.world_size)
        rest = {k: v for k, v in common.items() if k != "batch_size"}
        return DataLoader(train_ds, batch_sampler=batches, generator=g, **rest), DataLoader(val_ds, **common)
    train = DataLoader(train_ds, shuffle=sampler is None, sampler=sampler, generator=g, **common)
    return train, DataLoader(val_ds, shuffle=False, **common)


def _loss(cfg: TrainConfig, data: DatasetSplit, rt: Runtime) -> nn.Module:
    weight = None
    if cfg.balance == "loss":
        weight = class_weights([t for _, t in data.index(data.train)], len(data.labels)).to(rt.device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


class Trainer:
    """The state shared by the phases of one run."""

    def __init__(self, cfg: TrainConfig, rt: Runtime, data: DatasetSplit, start: Start):
        self.cfg, self.rt, self.data, self.start = cfg, rt, data, start
        self.model = start.model.to(rt.device)
        self.channels_last = rt.cuda and cfg.channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.head_root = find_head(self.model)[0].split(".")[0]
        self.loss_fn = _loss(cfg, data, rt)
        self.train_loader, self.val_loader = _loaders(cfg, data, rt, start.preprocessing, cfg.augment)
        self.best = Best()
        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        self.total_epochs = 0
        self.epochs_done = 0  # every epoch of every phase (the auto recipe restarts ``epoch`` per candidate)
        self.shuffle_seed = cfg.seed  # the batch order's seed (training/seeds.py gives each head its own)
        self.on_epoch: Callable[[dict[str, Any]], None] = lambda _: None
        self.soup: dict[str, Any] | None = None  # several heads averaged (training/seeds.py): the evidence
        self.unaveraged: dict[str, torch.Tensor] | None = None  # the refit's own head, if averaged (distill.py)
        self.refit: dict[str, Any] | None = None  # the head trained again on every image (training/refit.py)
        self.distributed: dict[str, Any] | None = None  # how the run mapped onto torchrun's ranks (model.json)

        def plain_loaders() -> tuple[DataLoader, DataLoader]:
            # No augmentation reaches a cache (cache_allowed checks it): the eval transform is exact.
            return _loaders(cfg, data, rt, start.preprocessing, augment=False)[0], self.val_loader

        self.caches = FeatureCaches(
            self.model, self.head_root, plain_loaders, rt.device, start.preprocessing.crop, self.channels_last, rt
        )

    def cache(self, phase: Phase) -> Cached | None:
        """The split and cached tensors of a phase; None if it runs the whole network."""
        return self.caches.get(phase.plan) if phase.cached else None

    def run_phase(self, phase: Phase) -> None:
        cfg, rt = self.cfg, self.rt
        apply_freeze(self.model, phase.plan)
        opt, phase.groups = build_optimizer(self.model, phase.plan, cfg)
        cached = self.cache(phase)
        phase.cached = cached is not None
        log.info(
            "phase %s: %d epochs, %s; learning rates %s",
            phase.name,
            phase.epochs,
            "feature cache" if phase.cached else "full forward",
            ", ".join(f"{g.stage}={g.lr:.2e}" for g in phase.groups),
        )
        steps_per_epoch = self._steps_per_epoch(phase)
        sched = build_schedule(
            opt,
            cfg.schedule,
            steps_per_epoch * phase.epochs,
            round(cfg.warmup_epochs * steps_per_epoch),
            steps_per_epoch,
            cfg.step_epochs,
            cfg.step_gamma,
        )
        train_module: nn.Module = cached.split.suffix if cached else self.model
        if rt.distributed:
            train_module = DDP(train_module, device_ids=[rt.device.index] if rt.cuda else None)
        stale = 0
        for _ in range(phase.stop_after or phase.epochs):
            self.epoch += 1
            self.epochs_done += 1
            tr, va = self._epoch(phase, train_module, opt, sched)
            # A refit keeps its last epoch: its validation images are training images, nothing to select on.
            improved = phase.stop_after is None and self.best.update(self.epoch, va, self.model)
            self._record(phase, tr, va, opt, improved)
            stale = 0 if improved else stale + 1
            if cfg.patience and stale >= cfg.patience and phase.stop_after is None:
                log.info("early stopping: no improvement for %d epochs", stale)
                break

    def _steps_per_epoch(self, phase: Phase) -> int:
        cached = self.cache(phase)
        if cached:
            n = len(cached.pooled()[0]) if phase.pooled else len(cached.train)
            return max(1, math.ceil(n / self.rt.world_size / self.cfg.batch_size))
        return max(1, len(self.train_loader))

    def _epoch(self, phase: Phase, module: nn.Module, opt: Any, sched: Any) -> tuple[EpochStats, EpochStats]:
        cfg, rt = self.cfg, self.rt

        def set_mode() -> None:
            set_train_mode(self.model, phase.plan, cfg.frozen_bn)

        cached = self.cache(phase)
        if cached:
            split, fva, yva = cached.split, cached.val, cached.val_targets
            ftr, ytr = cached.pooled() if phase.pooled else (cached.train, cached.train_targets)
            g = torch.Generator().manual_seed(self.shuffle_seed * 1000 + self.epoch)
            weights = None
            if cfg.balance == "sampler":
                weights = class_weights(ytr.tolist(), len(self.data.labels))[ytr]
            step = cfg.batch_size * rt.world_size  # the global batch; each rank takes its slice
            teacher = phase.teacher if phase.pooled else None
            batches = feature_batches(ftr, ytr, step, g, True, rt.rank, rt.world_size, weights, teacher)
            extra = None if teacher is None else partial(focal_distillation, weight=cfg.distill)
            tr = train_epoch(
                module, batches, opt, sched, self.loss_fn, rt, set_mode, cfg.amp, False, self._desc(phase), extra
            )
            va = eval_epoch(
                split.suffix, feature_batches(fva, yva, 256, None, shuffle=False), self.loss_fn, rt, cfg.amp
            )
            return tr, va
        desc = self._desc(phase)
        tr = train_epoch(
            module, self.train_loader, opt, sched, self.loss_fn, rt, set_mode, cfg.amp, self.channels_last, desc
        )
        va = eval_epoch(self.model, self.val_loader, self.loss_fn, rt, cfg.amp, self.channels_last)
        return tr, va

    def _desc(self, phase: Phase) -> str:
        return f"{phase.name} epoch {self.epoch}/{phase.epochs}"

    def _record(self, phase: Phase, tr: EpochStats, va: EpochStats, opt: Any, improved: bool) -> None:
        row = {
            "epoch": self.epoch,
            "phase": phase.name,
            "train_loss": round(tr.loss, 6),
            "train_accuracy": round(tr.accuracy, 6),
            "val_loss": round(va.loss, 6),
            "val_accuracy": round(va.accuracy, 6),
            "lr": opt.param_groups[-1]["lr"],
        }
        self.history.append(row)
        # The epoch within the phase, and the run's progress over every phase (auto trains several candidates).
        log.info(
            "[%s] epoch %d/%d (%d of %d in all) train loss %.4f acc %.4f | val loss %.4f acc %.4f%s",
            phase.name,
            self.epoch,
            phase.epochs,
            self.epochs_done,
            self.total_epochs,
            tr.loss,
            tr.accuracy,
            va.loss,
            va.accuracy,
            " *" if improved else "",
        )
        self.on_epoch(row)
