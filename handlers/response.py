"""Response bodies: top-k predictions and per-item errors, as compact JSON text.

Success (raw image or ``{"data": ...}``)::

    {"model_name": "antsbees", "model_version": "2", "batch_size": 3,
     "predictions": [{"label": "bees", "score": 0.931}, {"label": "ants", "score": 0.069}]}

KServe v1 (``{"instances": [...]}``): ``predictions`` holds one such list per instance, in order.
Error: ``{"code": 415, "type": "NotAnImageError", "reason": "not_an_image", "message": "..."}``; the
``code``/``type``/``message`` keys are the ones TorchServe's own errors use.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import torch

from graft.core.errors import GraftError

SCORE_DECIMALS = 6


def topk(probs: torch.Tensor, labels: Sequence[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` most probable labels of one probability row (capped at the number of classes).

    Scores are truncated (not rounded) to 6 decimals so they never sum above 1.
    """
    k = min(k, len(labels))
    values, indices = torch.topk(probs, k)
    scale = 10**SCORE_DECIMALS
    return [
        {"label": labels[int(i)], "score": math.floor(float(v) * scale) / scale}
        for v, i in zip(values.tolist(), indices.tolist(), strict=True)
    ]


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    # float64 softmax: float32 top-k sums can exceed 1 by an ulp, which clients notice.
    return torch.softmax(logits.double(), dim=-1)


def prediction_body(
    model_name: str, model_version: str, per_instance: list[list[dict[str, Any]]], kserve: bool, batch_size: int
) -> str:
    body = {
        "model_name": model_name,
        "model_version": model_version,
        # Images inferred together with this request's, across the whole TorchServe batch.
        "batch_size": batch_size,
        "predictions": per_instance if kserve else per_instance[0],
    }
    return json.dumps(body, separators=(",", ":"))


def error_body(error: GraftError, status: int) -> str:
    body = {
        "code": status,
        "type": type(error).__name__,
        "reason": getattr(error, "reason", "internal_error"),
        "message": str(error),
    }
    return json.dumps(body, separators=(",", ":"))
