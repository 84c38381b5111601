"""Building what a run starts from: the data split and the model (fresh or warm-started)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from graft.core.artifact import ModelCard, load_model, read_card
from graft.core.errors import DatasetError
from graft.core.preprocessing import WHITE, Preprocessing, parse_color
from graft.core.util import file_digest
from graft.core.zoo import LoadReport, create_model, find_head, replace_head
from training.config import TrainConfig
from training.data import DatasetSplit, collect_folder, collect_manifest, finish

log = logging.getLogger(__name__)


def background(cfg: TrainConfig) -> tuple[int, int, int]:
    """The colour transparency is composited on: the flag, else a warm start's parent's, else white."""
    if cfg.background is not None:
        return parse_color(cfg.background)
    if cfg.init_from is not None:
        return read_card(cfg.init_from).preprocessing.background
    return WHITE


def load_data(cfg: TrainConfig) -> DatasetSplit:
    """Every kept image decoded once; refuses (with the fix) what cannot train, warns about what misleads."""
    from training.check import findings

    bg = background(cfg)
    if cfg.manifest is not None:
        collected = collect_manifest(cfg.manifest, cfg.max_per_class, cfg.seed, cfg.val_fraction, background=bg)
    else:
        assert cfg.data is not None
        collected = collect_folder(cfg.data, cfg.val_fraction, cfg.seed, cfg.max_per_class, background=bg)
    found = findings(collected, near=False, background=bg)
    errors = [f.message for f in found if f.severity == "error"]
    if errors:
        raise DatasetError(" ".join(errors) + f" ('graft check {collected.source}' reports every problem)")
    data = finish(collected)
    for s in data.skipped:
        log.warning("skipped %s: %s", s.path, s.reason)
    for f in found:
        if f.severity != "error" and f.code not in ("unreadable", "transparency"):  # both in the summary below
            log.log(logging.WARNING if f.severity == "warning" else logging.INFO, "data: %s", f.summary())
    log.info(
        "data: %d train / %d val images used, %d classes (%s)%s%s",
        len(data.train), len(data.val), len(data.labels),
        ", ".join(f"{k}={v}" for k, v in data.class_counts().items()),
        f"; {data.transparent} with transparency, composited on RGB {bg}" if data.transparent else "",
        f"; skipped {len(data.skipped)} unreadable file(s), listed above" if data.skipped else "",
    )  # fmt: skip
    return data


def weights_source(weights: str) -> str:
    if weights in ("imagenet", "none"):
        return weights
    return f"{weights} ({file_digest(Path(weights))})"


@dataclass
class Start:
    model: nn.Module
    preprocessing: Preprocessing
    report: LoadReport
    weights: str  # where the starting weights came from, with a digest
    backbone: str
    parent: str | None = None


def run_reference(run_dir: Path, card: ModelCard) -> str:
    """A run folder as lineage names it: its absolute path and its weights' digest."""
    return f"{Path(run_dir).resolve()} ({file_digest(Path(run_dir) / card.weights_file)})"


def create_or_warm_start(cfg: TrainConfig, labels: list[str]) -> Start:
    """The model to train and where its weights came from.

    A warm start keeps the parent's backbone and preprocessing; head rows of labels the parent
    knew are kept, rows of new labels start fresh (the head grows).
    """
    if cfg.init_from is None:
        model, pre, report = create_model(cfg.backbone, len(labels), cfg.weights)
        pre = pre.model_copy(update={"background": background(cfg)})
        return Start(model, pre, report, weights_source(cfg.weights), cfg.backbone)
    parent, card = load_model(cfg.init_from)
    head_path, old_head = find_head(parent)
    old_state = {k: v.clone() for k, v in old_head.state_dict().items()}
    replace_head(parent, len(labels))
    new_head = find_head(parent)[1]
    assert isinstance(new_head.weight, torch.Tensor) and isinstance(new_head.bias, torch.Tensor)
    kept = [label for label in labels if label in card.labels]
    with torch.no_grad():
        for label in kept:
            i_new, i_old = labels.index(label), card.labels.index(label)
            new_head.weight[i_new] = old_state["weight"][i_old]
            new_head.bias[i_new] = old_state["bias"][i_old]
    new = sorted(set(labels) - set(card.labels))
    log.info("warm start from %s: kept head rows for %d labels, new: %s", cfg.init_from, len(kept), new or "none")
    pre = card.preprocessing.model_copy(update={"background": background(cfg)})
    report = LoadReport(source=f"run:{cfg.init_from}", head=head_path)
    if card.backbone != cfg.backbone:
        log.info("warm start keeps the parent's backbone %s (not %s)", card.backbone, cfg.backbone)
    parent_ref = run_reference(cfg.init_from, card)
    return Start(parent, pre, report, f"run:{parent_ref}", card.backbone, parent_ref)
