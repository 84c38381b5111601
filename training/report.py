"""Writing the run folder: weights, model.json, metrics.json and plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.core.artifact import MAX_SKIPPED_LISTED, METRICS_JSON, Lineage, ModelCard, save_weights, write_card
from graft.core.util import utc_now
from training.config import TrainConfig
from training.data import DatasetSplit
from training.distill import save_unaveraged
from training.evaluate import classification_report
from training.loop import EpochStats
from training.plots import plot_confusion, plot_curves

if TYPE_CHECKING:
    from training.trainer import Phase, Trainer

log = logging.getLogger(__name__)


def _recipe(cfg: TrainConfig, trainer: Trainer, phases: list[Phase], auto: dict[str, Any] | None) -> dict[str, Any]:
    recipe = cfg.card_recipe()
    if auto is not None:
        recipe["auto"] = auto
        if "chosen" in auto:
            # what auto chose, not a choice of the user's: it stays out of "explicit", so a retraining decides afresh
            recipe["trainable_stages"] = auto["chosen"]["trainable_stages"]
    recipe["backbone"] = trainer.start.backbone
    recipe["stages"] = [s.name for s in phases[-1].plan.stages]
    recipe["frozen_stages"] = list(phases[-1].plan.frozen)
    recipe["phases"] = [
        {
            "name": p.name,
            "epochs": p.epochs,
            "feature_cache": p.cached,
            "frozen_stages": len(p.plan.frozen),
            "learning_rates": {g.stage: g.lr for g in p.groups},
        }
        for p in phases
    ]
    if trainer.soup is not None:
        recipe["head_seeds_averaged"] = trainer.soup
    if trainer.refit is not None:
        recipe["refitted"] = trainer.refit
    if trainer.distributed is not None:
        recipe["distributed"] = trainer.distributed
    recipe["pretrained"] = {"source": trainer.start.report.source, "dropped_head_keys": trainer.start.report.dropped}
    return recipe


def _lineage(data: DatasetSplit, trainer: Trainer, started: str) -> Lineage:
    """Where the model came from: its data (digest, source, counts, what was skipped) and its start."""
    return Lineage(
        dataset_digest=data.digest,
        dataset_path=data.source,
        num_train=len(data.train),
        num_val=len(data.val),
        class_counts=data.class_counts(),
        skipped=[s.as_dict() for s in data.skipped[:MAX_SKIPPED_LISTED]],
        num_skipped=len(data.skipped),
        num_transparent=data.transparent,
        pretrained_weights=trainer.start.weights,
        parent_model=trainer.start.parent,
        started_at=started,
        finished_at=utc_now(),
    )


def write_run_folder(
    run_dir: Path,
    cfg: TrainConfig,
    data: DatasetSplit,
    trainer: Trainer,
    phases: list[Phase],
    final: EpochStats,
    started: str,
    wall: float,
    auto: dict[str, Any] | None = None,
) -> dict[str, Any]:
    report = classification_report(final.targets, final.preds, data.labels)
    metrics: dict[str, Any] = {
        "val_accuracy": report["accuracy"],
        "val_loss": round(final.loss, 6),
        "best_epoch": trainer.best.epoch,
        "epochs_run": trainer.epoch,
        "macro_f1": report["macro_f1"],
        "per_class": report["per_class"],
        "confusion_matrix": report["confusion_matrix"],
        "labels": data.labels,
        "feature_cache": any(p.cached for p in phases),
        "wall_time_s": round(wall, 2),
        "history": trainer.history,
    }
    save_weights(run_dir, trainer.model.state_dict())
    (run_dir / METRICS_JSON).write_text(json.dumps(metrics, indent=2) + "\n")
    pre = trainer.start.preprocessing
    card = ModelCard(
        backbone=trainer.start.backbone,
        num_classes=len(data.labels),
        labels=data.labels,
        preprocessing=pre,
        recipe=_recipe(cfg, trainer, phases, auto),
        metrics={k: metrics[k] for k in ("val_accuracy", "val_loss", "best_epoch", "epochs_run", "macro_f1")},
        lineage=_lineage(data, trainer, started),
    )
    write_card(run_dir, card)
    save_unaveraged(trainer, run_dir, card)
    plot_curves(trainer.history, run_dir / "curves.png")
    plot_confusion(report["confusion_matrix"], data.labels, run_dir / "confusion_matrix.png")
    log.info(
        "best val accuracy %.4f at epoch %d; run folder %s (%.1fs)",
        report["accuracy"],
        trainer.best.epoch,
        run_dir,
        wall,
    )
    return metrics
