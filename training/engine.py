"""``fit``: fine-tune a zoo backbone on an image dataset and write a self-describing run folder."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

from graft.core.transforms import eval_transform, train_transform
from graft.core.util import utc_now
from graft.core.zoo import find_head, model_stages
from training.config import TrainConfig
from training.data import DatasetSplit, ImageDataset, class_weights, collate
from training.features import Split, compute_features, describe, feature_batches, split_model
from training.freeze import FreezePlan, apply_freeze, plan_freeze, set_train_mode
from training.loop import EpochStats, eval_epoch, train_epoch
from training.optim import GroupSpec, build_optimizer, build_schedule
from training.runtime import Runtime, init_runtime, seed_everything, shutdown_runtime
from training.start import Start, create_or_warm_start, load_data

log = logging.getLogger(__name__)


@dataclass
class Phase:
    name: str
    plan: FreezePlan
    epochs: int
    cached: bool = False
    groups: list[GroupSpec] = field(default_factory=list)


@dataclass
class FitResult:
    run_dir: Path
    val_accuracy: float
    best_epoch: int
    used_feature_cache: bool
    wall_time_s: float
    metrics: dict[str, Any]


class _Best:
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


# Past this, cached activations of an early cut would not fit comfortably in memory: run the network.
MAX_CACHE_BYTES = 4 * 2**30


def _cache_allowed(cfg: TrainConfig, plan: FreezePlan) -> bool:
    """The frozen prefix is a fixed function of the image: eval mode and no random augmentation."""
    return cfg.feature_cache and bool(plan.frozen) and cfg.frozen_bn == "eval" and not cfg.augment


def _phases(cfg: TrainConfig, start: Start) -> list[Phase]:
    stages = model_stages(start.model)
    plan = plan_freeze(stages, cfg.freeze_until, cfg.trainable_stages)
    phases = []
    if cfg.head_warmup_epochs and not plan.head_only:
        head_plan = plan_freeze(stages)
        phases.append(Phase("head-warmup", head_plan, cfg.head_warmup_epochs, _cache_allowed(cfg, head_plan)))
    phases.append(Phase("main", plan, cfg.epochs, _cache_allowed(cfg, plan)))
    return phases


def _loaders(
    cfg: TrainConfig, data: DatasetSplit, rt: Runtime, pre: Any, augment: bool
) -> tuple[DataLoader, DataLoader]:
    train_items, val_items = data.index(data.train), data.index(data.val)
    train_ds = ImageDataset(train_items, train_transform(pre, augment))
    val_ds = ImageDataset(val_items, eval_transform(pre))
    g = torch.Generator().manual_seed(cfg.seed)
    sampler: Any = None
    if rt.distributed:
        sampler = DistributedSampler(train_ds, rt.world_size, rt.rank, shuffle=True, seed=cfg.seed)
    elif cfg.balance == "sampler":
        w = class_weights([t for _, t in train_items], len(data.labels))
        sampler = WeightedRandomSampler([float(w[t]) for _, t in train_items], len(train_items), generator=g)
    common: dict[str, Any] = {"batch_size": cfg.batch_size, "num_workers": cfg.num_workers, "collate_fn": collate}
    common["pin_memory"] = rt.cuda
    train = DataLoader(train_ds, shuffle=sampler is None, sampler=sampler, generator=g, **common)
    return train, DataLoader(val_ds, shuffle=False, **common)


def _loss(cfg: TrainConfig, data: DatasetSplit, rt: Runtime) -> nn.Module:
    weight = None
    if cfg.balance == "loss":
        weight = class_weights([t for _, t in data.index(data.train)], len(data.labels)).to(rt.device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


class _Trainer:
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
        self.best = _Best()
        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        self.total_epochs = 0
        self._caches: dict[tuple[str, ...], tuple[Split, tuple[torch.Tensor, ...]] | None] = {}
        self.on_epoch: Callable[[dict[str, Any]], None] = lambda _: None

    def cache(self, phase: Phase) -> tuple[Split, tuple[torch.Tensor, ...]] | None:
        """The split and cached (train features, targets, val features, targets) of a phase; None if none."""
        key = phase.plan.frozen
        if key not in self._caches:
            self._caches[key] = self._build_cache(phase)
        return self._caches[key]

    def _build_cache(self, phase: Phase) -> tuple[Split, tuple[torch.Tensor, ...]] | None:
        split = split_model(self.model, phase.plan, self.head_root)
        if split is None:
            log.info(
                "feature cache: the model cannot be cut after %s; running the whole network", phase.plan.frozen[-1]
            )
            return None
        crop = self.start.preprocessing.crop
        with torch.no_grad():
            probe = split.prefix.eval()(torch.zeros(1, 3, crop, crop, device=self.rt.device))
        size = probe.numel() * 4 * (len(self.data.train) + len(self.data.val))
        if size > MAX_CACHE_BYTES:
            log.info("feature cache: %.1f GiB of activations at the %s is too much; running the whole network",
                     size / 2**30, split.boundary)  # fmt: skip
            return None
        t0 = time.perf_counter()
        # No augmentation reaches the cache (checked by _cache_allowed): the eval transform is exact.
        plain, _ = _loaders(self.cfg, self.data, self.rt, self.start.preprocessing, augment=False)
        tr = compute_features(split.prefix, plain, self.rt.device, "train features", self.channels_last)
        va = compute_features(split.prefix, self.val_loader, self.rt.device, "val features", self.channels_last)
        log.info(
            "feature cache: the frozen stages ran once per image; cached the %s: %s + %s in %.1fs",
            split.boundary, describe(tr[0]), describe(va[0]), time.perf_counter() - t0,
        )  # fmt: skip
        return split, (*tr, *va)

    def run_phase(self, phase: Phase) -> None:
        cfg, rt = self.cfg, self.rt
        apply_freeze(self.model, phase.plan)
        opt, phase.groups = build_optimizer(self.model, phase.plan, cfg)
        cached = self.cache(phase) if phase.cached else None
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
        train_module: nn.Module = cached[0].suffix if cached else self.model
        if rt.distributed:
            train_module = DDP(train_module, device_ids=[rt.device.index] if rt.cuda else None)
        stale = 0
        for _ in range(phase.epochs):
            self.epoch += 1
            tr, va = self._epoch(phase, train_module, opt, sched)
            improved = self.best.update(self.epoch, va, self.model)
            self._record(phase, tr, va, opt, improved)
            stale = 0 if improved else stale + 1
            if cfg.patience and stale >= cfg.patience:
                log.info("early stopping: no improvement for %d epochs", stale)
                break

    def _steps_per_epoch(self, phase: Phase) -> int:
        cached = self.cache(phase) if phase.cached else None
        if cached:
            n = len(cached[1][0])
            return max(1, math.ceil(n / self.rt.world_size / self.cfg.batch_size))
        return max(1, len(self.train_loader))

    def _epoch(self, phase: Phase, module: nn.Module, opt: Any, sched: Any) -> tuple[EpochStats, EpochStats]:
        cfg, rt = self.cfg, self.rt

        def set_mode() -> None:
            set_train_mode(self.model, phase.plan, cfg.frozen_bn)

        cached = self.cache(phase) if phase.cached else None
        if cached:
            split, (ftr, ytr, fva, yva) = cached
            g = torch.Generator().manual_seed(cfg.seed * 1000 + self.epoch)
            weights = None
            if cfg.balance == "sampler":
                weights = class_weights(ytr.tolist(), len(self.data.labels))[ytr]
            batches = feature_batches(ftr, ytr, cfg.batch_size, g, True, rt.rank, rt.world_size, weights)
            tr = train_epoch(module, batches, opt, sched, self.loss_fn, rt, set_mode, cfg.amp, False, self._desc())
            va = eval_epoch(
                split.suffix, feature_batches(fva, yva, 256, None, shuffle=False), self.loss_fn, rt, cfg.amp
            )
            return tr, va
        if isinstance(self.train_loader.sampler, DistributedSampler):
            self.train_loader.sampler.set_epoch(self.epoch)

        tr = train_epoch(
            module, self.train_loader, opt, sched, self.loss_fn, rt, set_mode, cfg.amp, self.channels_last, self._desc()
        )
        va = eval_epoch(self.model, self.val_loader, self.loss_fn, rt, cfg.amp, self.channels_last)
        return tr, va

    def _desc(self) -> str:
        return f"epoch {self.epoch}/{self.total_epochs}"

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
        log.info(
            "epoch %d/%d [%s] train loss %.4f acc %.4f | val loss %.4f acc %.4f%s",
            self.epoch,
            self.total_epochs,
            phase.name,
            tr.loss,
            tr.accuracy,
            va.loss,
            va.accuracy,
            " *" if improved else "",
        )
        self.on_epoch(row)


@contextmanager
def _run_log(run_dir: Path, enabled: bool) -> Iterator[None]:
    """Mirror graft's and training's log records into RUN_DIR/train.log."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    loggers = [logging.getLogger(n) for n in ("training", "graft")]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        handler.close()


def _write_progress(run_dir: Path, row: dict[str, Any], total: int) -> None:
    body = {"phase": row["phase"], "epoch": row["epoch"], "epochs": total, "fraction": row["epoch"] / max(total, 1)}
    body.update({k: row[k] for k in ("val_accuracy", "val_loss")})
    tmp = run_dir / "progress.json.tmp"
    tmp.write_text(json.dumps(body) + "\n")
    tmp.replace(run_dir / "progress.json")


def fit(cfg: TrainConfig) -> FitResult:
    """Train per ``cfg`` and write the run folder ``cfg.output``; returns the headline numbers."""
    from training.report import write_run_folder

    rt = init_runtime(cfg.device)
    seed_everything(cfg.seed)
    run_dir = Path(cfg.output)
    if rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    t0, started = time.perf_counter(), utc_now()
    try:
        with _run_log(run_dir, rt.is_main):
            data = load_data(cfg)
            start = create_or_warm_start(cfg, data.labels)
            trainer = _Trainer(cfg, rt, data, start)
            phases = _phases(cfg, start)
            trainer.total_epochs = sum(p.epochs for p in phases)
            if rt.is_main:
                trainer.on_epoch = lambda row: _write_progress(run_dir, row, trainer.total_epochs)
            for phase in phases:
                trainer.run_phase(phase)
            trainer.model.load_state_dict(trainer.best.state)
            # The best epoch's validation pass already holds every prediction the report needs.
            final = trainer.best.val
            wall = time.perf_counter() - t0
            metrics = {}
            if rt.is_main:
                metrics = write_run_folder(run_dir, cfg, data, trainer, phases, final, started, wall)
            return FitResult(run_dir, final.accuracy, trainer.best.epoch, any(p.cached for p in phases), wall, metrics)
    finally:
        shutdown_runtime(rt)
