"""Which layers stay in FP32: a per-node sensitivity pass, measured on the model's own output.

For each candidate node (the ones with weights: Conv, Gemm, MatMul) an INT8 variant is built with only
that node left in FP32, and its logits are compared with the FP32 model's on a few training images.
The error is the output's signal-to-quantization-noise ratio (SQNR, dB: higher is closer to FP32). A
node whose FP32 copy gains at least ``min_gain_db`` over the all-INT8 model is a candidate to keep;
the best few together are kept only if, measured again together, they still gain that much. Every
node left in FP32 costs speed (ONNX Runtime leaves the INT8 kernels around it), so the bar is explicit.
"""

from __future__ import annotations

import logging
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
    images: int = 0
    seconds: float = 0.0

    def as_record(self, top: int = 10) -> dict[str, Any]:
        return {
            "metric": "logit SQNR vs FP32 (dB) on training images",
            "images": self.images,
            "all_int8_db": round(self.all_int8_db, 3),
            "fp32_nodes": list(self.fp32_nodes),
            "with_fp32_nodes_db": round(self.chosen_db, 3),
            "nodes_measured": len(self.gains),
            "top_gains_db": [[n, round(g, 3)] for n, g in self.gains[:top]],
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


def choose_fp32_nodes(
    variant: VariantFn,
    reference: np.ndarray,
    candidates: Sequence[str],
    min_gain_db: float = 2.0,
    max_nodes: int = 3,
) -> Sensitivity:
    """Measure each candidate alone in FP32; keep the best ones that gain at least ``min_gain_db``."""
    t0 = time.perf_counter()
    base = sqnr_db(reference, variant(()))
    gains = sorted(((n, sqnr_db(reference, variant((n,))) - base) for n in candidates), key=lambda x: -x[1])
    keep = tuple(n for n, g in gains[:max_nodes] if g >= min_gain_db)
    chosen_db = base
    if keep:
        chosen_db = sqnr_db(reference, variant(keep))
        if chosen_db - base < min_gain_db:  # together they do not help as much as alone: keep none
            log.info("sensitivity: %s together gain only %.2f dB; quantizing every node", keep, chosen_db - base)
            keep, chosen_db = (), base
    result = Sensitivity(base, keep, chosen_db, gains, len(reference), time.perf_counter() - t0)
    best = ", ".join(f"{n} {g:+.2f}" for n, g in gains[:3])
    log.info(
        "sensitivity over %d nodes on %d images: all-INT8 %.2f dB; best single gains (dB): %s; FP32 kept: %s (%.2f dB)",
        len(candidates), len(reference), base, best or "-", list(keep) or "none", chosen_db,
    )  # fmt: skip
    return result
