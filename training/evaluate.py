"""Classification metrics, and evaluating a saved run on any labelled images."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from graft.core.artifact import ONNX_INT8_FILE, load_model, read_card
from graft.core.errors import ArtifactError
from graft.core.transforms import eval_transform

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "int8")


def classification_report(targets: Sequence[int], preds: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix (rows = truth)."""
    k = len(labels)
    cm = torch.zeros(k, k, dtype=torch.long)
    for t, p in zip(targets, preds, strict=True):
        cm[t, p] += 1
    tp = cm.diag().float()
    support = cm.sum(1).float()
    predicted = cm.sum(0).float()
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    n = int(cm.sum())
    per_class = {
        label: {
            "precision": round(float(precision[i]), 6),
            "recall": round(float(recall[i]), 6),
            "f1": round(float(f1[i]), 6),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }
    present = support > 0
    return {
        "accuracy": int(cm.diag().sum()) / n if n else 0.0,
        "n": n,
        "macro_f1": float(f1[present].mean()) if bool(present.any()) else 0.0,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "labels": list(labels),
    }


def _int8_model(run_dir: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The INT8 ONNX model as the handler serves it (ONNX Runtime, CPU)."""
    from training.quantize import logits, session

    path = Path(run_dir) / ONNX_INT8_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: export the run with --quantize int8 before judging it in INT8")
    sess = session(path)
    return lambda x: torch.from_numpy(logits(sess, x.numpy()))


def predict_paths(
    run_dir: Path, paths: Sequence[Path], device: str = "cpu", batch_size: int = 32, precision: str = "fp32",
    feature_cache: Path | None = None,
) -> tuple[list[int], list[str]]:
    """Top-1 class index for each image (-1 when unreadable), and the run's labels."""
    probs, labels = predict_probabilities(run_dir, paths, device, batch_size, precision, feature_cache)
    return [max(range(len(row)), key=row.__getitem__) if row else -1 for row in probs], labels


@torch.no_grad()
def predict_probabilities(
    run_dir: Path, paths: Sequence[Path], device: str = "cpu", batch_size: int = 32, precision: str = "fp32",
    feature_cache: Path | None = None,
) -> tuple[list[list[float]], list[str]]:
    """Class probabilities for each image ([] when unreadable), and the run's labels.

    ``precision="int8"`` runs ``model.int8.onnx`` (``graft export --quantize int8``) instead of the weights.
    ``feature_cache``: a folder where the frozen stages' output per image is kept and read back
    (:mod:`training.frozen_features`; FP32 only).
    """
    from training.data import ImageDataset, collate

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "int8":
        card = read_card(run_dir)
        model: Callable[[torch.Tensor], torch.Tensor] = _int8_model(run_dir)
        device = "cpu"
    else:
        weights, card = load_model(run_dir, device)
        if feature_cache is not None:
            from training.frozen_features import predict_with_cache

            try:
                cached = predict_with_cache(weights, card, paths, device, batch_size, feature_cache)
            except (RuntimeError, ValueError, OSError) as e:  # a cut that fails here only costs time
                log.warning("frozen features of %s not used (%s): running the whole model", run_dir, e)
                cached = None
            if cached is not None:
                return cached, card.labels
        model = weights
    pre = card.preprocessing
    ds = ImageDataset([(Path(p), i) for i, p in enumerate(paths)], eval_transform(pre), pre.background)
    out: list[list[float]] = [[] for _ in paths]
    for x, idx in DataLoader(ds, batch_size=batch_size, collate_fn=collate):
        if x.numel() == 0:
            continue
        probs = model(x.to(device)).float().softmax(1).cpu()
        for i, row in zip(idx.tolist(), probs.tolist(), strict=True):
            out[i] = row
    return out, card.labels


def evaluate_run(
    run_dir: Path, samples: Sequence[tuple[Path, str]], device: str = "cpu", precision: str = "fp32",
    feature_cache: Path | None = None,
) -> dict[str, Any]:
    """Evaluate a run folder on ``(path, label)`` pairs, in FP32 (its weights) or INT8 (``model.int8.onnx``).

    Samples whose label the model does not know are reported under ``unknown_labels`` and left
    out of the metrics; images that fail to decode are counted under ``unreadable``.
    """
    preds, labels = predict_paths(Path(run_dir), [p for p, _ in samples], device, precision=precision,
                                  feature_cache=feature_cache)  # fmt: skip
    pos = {label: i for i, label in enumerate(labels)}
    targets, kept, unknown, unreadable = [], [], set(), 0
    for (_, label), pred in zip(samples, preds, strict=True):
        if label not in pos:
            unknown.add(label)
        elif pred < 0:
            unreadable += 1
        else:
            targets.append(pos[label])
            kept.append(pred)
    report = classification_report(targets, kept, labels)
    report["unknown_labels"] = sorted(unknown)
    report["unreadable"] = unreadable
    report["predictions"] = [labels[p] if p >= 0 else None for p in preds]
    report["precision"] = precision
    return report
