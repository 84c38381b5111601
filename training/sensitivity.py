"""Which layers stay in FP32: a per-node sensitivity pass, measured on the model's own output.

Candidates are the nodes with weights (Conv, Gemm, MatMul). An INT8 variant is built with some of them
left in FP32, and its logits are compared with the FP32 model's on a few training images; the error is
the output's signal-to-quantization-noise ratio (SQNR, dB: higher is closer to FP32). Building a variant
costs about a second (ONNX Runtime quantizes every weight again), so the search is in two rounds: the
candidates in graph order are cut into about sqrt(N) contiguous groups and each group is measured in
FP32, then each node of the groups that gained most is measured alone. A node whose FP32 copy alone gains
at least ``min_gain_db`` over the all-INT8 model is kept; the best few together are kept only if,
measured together, they still gain that much. Every node left in FP32 costs speed (ONNX Runtime leaves
the INT8 kernels around it), so the bar is explicit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")

# Builds the INT8 model with the given nodes left in FP32 and returns its logits on the sensitivity images.
VariantFn = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class Sensitivity:
    all_int8_db: float
    fp32_nodes: tuple[str, ...]
    chosen_db: float
    # (node, dB gained by leaving only that node in FP32), best first
    gains: list[tuple[str, float]] = field(default_factory=list)
    # (first node of the group, nodes in it, dB gained by leaving the whole group in FP32), graph order
    group_gains: list[tuple[str, int, float]] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0

    def as_record(self, top: int = 10) -> dict[str, Any]:
        return {
            "metric": "logit SQNR vs FP32 (dB) on training images",
            "images": self.images,
            "all_int8_db": round(self.all_int8_db, 3),
            "fp32_nodes": list(self.fp32_nodes),
            "with_fp32_nodes_db": round(self.chosen_db, 3),
            "nodes_measured_alone": len(self.gains),
            "top_gains_db": [[n, round(g, 3)] for n, g in self.gains[:top]],
            "group_gains_db": [[n, k, round(g, 3)] for n, k, g in self.group_gains],
            "seconds": round(self.seconds, 1),
        }


def sqnr_db(reference: np.ndarray, got: np.ndarray) -> float:
    """10·log10(|reference|² / |reference - got|²); +inf when they are identical."""
    noise = float(np.sum((reference.astype(np.float64) - got) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(max(signal, 1e-30) / noise))


def weight_nodes(model_path: Path) -> list[str]:
    """Names of the nodes whose weights are initializers (what per-channel INT8 quantizes), in graph order."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type in WEIGHT_OPS and len(n.input) > 1 and n.input[1] in initializers and n.name
    ]


def groups(candidates: Sequence[str], size: int | None = None) -> list[tuple[str, ...]]:
    """Contiguous groups of about sqrt(N) nodes each (graph order: neighbours share activations)."""
    size = size or max(1, math.isqrt(max(1, len(candidates) - 1)) + 1)
    return [tuple(candidates[i : i + size]) for i in range(0, len(candidates), size)]


def choose_fp32_nodes(
    variant: VariantFn,
    reference: np.ndarray,
    candidates: Sequence[str],
    min_gain_db: float = 2.0,
    max_nodes: int = 3,
    groups_measured: int = 2,
) -> Sensitivity:
    """Keep in FP32 the nodes that, alone, gain at least ``min_gain_db`` (measured as the module says)."""
    t0 = time.perf_counter()
    base = sqnr_db(reference, variant(()))

    def gain(nodes: Sequence[str]) -> float:
        return sqnr_db(reference, variant(tuple(nodes))) - base

    grouped = groups(candidates)
    group_gains = [(g[0], len(g), gain(g)) for g in grouped] if len(grouped) > 1 else []
    if group_gains:
        best_groups = sorted(range(len(grouped)), key=lambda i: -group_gains[i][2])[:groups_measured]
        singles = [n for i in sorted(best_groups) for n in grouped[i]]
    else:
        singles = list(candidates)
    gains = sorted(((n, gain((n,))) for n in singles), key=lambda x: -x[1])
    keep = tuple(n for n, g in gains[:max_nodes] if g >= min_gain_db)
    chosen_db = base
    if keep:
        chosen_db = sqnr_db(reference, variant(keep))
        if chosen_db - base < min_gain_db:  # together they do not help as much as alone: keep none
            log.info("sensitivity: %s together gain only %.2f dB; quantizing every node", keep, chosen_db - base)
            keep, chosen_db = (), base
    result = Sensitivity(base, keep, chosen_db, gains, group_gains, len(reference), time.perf_counter() - t0)
    best = ", ".join(f"{n} {g:+.2f}" for n, g in gains[:3])
    log.info(
        "sensitivity over %d nodes on %d images: all-INT8 %.2f dB; best single gains (dB): %s; FP32 kept: %s (%.2f dB)",
        len(candidates), len(reference), base, best or "-", list(keep) or "none", chosen_db,
    )  # fmt: skip
    return result
