"""``fit``: fine-tune a zoo backbone on an image dataset and write a self-describing run folder."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.core.util import utc_now
from training import refit, seeds
from training.config import TrainConfig
from training.distributed import check_fits, plan_for, quiet_other_ranks, rank_config
from training.runtime import init_runtime, seed_everything, shutdown_runtime
from training.start import create_or_warm_start, load_data
from training.trainer import Phase, Trainer, fixed_phases

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    run_dir: Path
    val_accuracy: float
    best_epoch: int
    used_feature_cache: bool
    wall_time_s: float
    metrics: dict[str, Any]


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


def _write_progress(run_dir: Path, row: dict[str, Any], done: int, total: int) -> None:
    body = {"phase": row["phase"], "epoch": done, "epochs": total, "fraction": min(1.0, done / max(total, 1))}
    body.update({k: row[k] for k in ("val_accuracy", "val_loss")})
    tmp = run_dir / "progress.json.tmp"
    tmp.write_text(json.dumps(body) + "\n")
    tmp.replace(run_dir / "progress.json")


def _train(cfg: TrainConfig, trainer: Trainer) -> tuple[list[Phase], dict[str, Any] | None]:
    """Run the phases of the recipe; the auto recipe's choice and evidence come back too."""
    from training import auto

    reason = auto.skip_reason(cfg) if cfg.recipe == "auto" else None
    if cfg.recipe == "auto" and reason is None:
        outcome = auto.search(trainer)
        return outcome.phases, outcome.evidence
    if reason is not None:
        log.info("recipe auto: no search (%s)", reason)
    phases = fixed_phases(cfg, trainer.start)
    trainer.total_epochs = sum(p.epochs for p in phases)
    for phase in phases:
        trainer.run_phase(phase)
    return phases, None if reason is None else {"skipped": reason}


def fit(cfg: TrainConfig) -> FitResult:
    """Train per ``cfg`` and write the run folder ``cfg.output``; returns the headline numbers."""
    from training.report import write_run_folder

    rt = init_runtime(cfg.device)
    quiet_other_ranks(rt)
    seed_everything(cfg.seed)
    run_dir = Path(cfg.output)
    if rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    t0, started = time.perf_counter(), utc_now()
    try:
        with _run_log(run_dir, rt.is_main):
            data = load_data(cfg)
            dist_plan = plan_for(cfg, rt)
            check_fits(dist_plan, len(data.train), len(data.val))
            start = create_or_warm_start(cfg, data.labels)
            trainer = Trainer(rank_config(cfg, dist_plan), rt, data, start)
            if rt.distributed:
                trainer.distributed = dist_plan.record()
            if rt.is_main:
                trainer.on_epoch = lambda row: _write_progress(run_dir, row, trainer.epochs_done, trainer.total_epochs)
            head = seeds.head_start(trainer)  # before anything trains: where every seed's head starts
            phases, auto = _train(trainer.cfg, trainer)
            trainer.model.load_state_dict(trainer.best.state)
            trainer.soup = seeds.average_heads(trainer, phases[-1], head)
            trainer.refit = refit.refit_head(trainer, phases[-1], head, trainer.soup)
            # The best epoch's validation pass already holds every prediction the report needs (after a refit:
            # the selection run's, which is all the validation images can still grade).
            final = trainer.best.val
            wall = time.perf_counter() - t0
            metrics = {}
            if rt.is_main:
                metrics = write_run_folder(run_dir, cfg, data, trainer, phases, final, started, wall, auto)
            return FitResult(run_dir, final.accuracy, trainer.best.epoch, any(p.cached for p in phases), wall, metrics)
    finally:
        shutdown_runtime(rt)
