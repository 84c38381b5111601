"""Static INT8 quantization of a run's ONNX model, with an accuracy guard: ``graft export --quantize int8``.

ONNX Runtime's post-training static quantization, as its performance guide has it for CNNs on x86:
the model is pre-processed (shape inference, BatchNorm folded), activations are calibrated on the run's
own training images through the handler's transform, weights are INT8 per output channel (symmetric),
activations UINT8 per tensor (asymmetric), in QDQ format (ONNX Runtime fuses it into its INT8 kernels,
which use AVX-512 VNNI / AVX-VNNI where the CPU has them). Nodes that measurement shows are costly to
quantize stay in FP32 (:mod:`training.sensitivity`). The INT8 model is then compared with the FP32 one
on the run's validation images; the export fails when accuracy drops by more than the allowed points.
Everything measured goes into ``model.json`` (``export.int8``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from graft.core.artifact import ONNX_FILE, ONNX_INT8_FILE, read_card, write_card
from graft.core.errors import QuantizationError
from graft.core.util import file_sha256
from training.run_images import run_split, spread, tensors
from training.sensitivity import Sensitivity, choose_fp32_nodes, weight_nodes

log = logging.getLogger(__name__)

METHODS = ("minmax", "percentile", "entropy")
# Histogram calibrators need batches of one size; MinMax merges ranges every few batches to bound memory.
CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class QuantizeOptions:
    """How ``--quantize int8`` quantizes; recorded in ``model.json`` so a retraining can do the same."""

    # The most validation accuracy (percentage points) INT8 may lose against FP32 before the export fails.
    max_accuracy_drop: float = 1.0
    calibration_images: int = 300
    calibration_method: str = "minmax"
    # Nodes kept in FP32: None = decided by the sensitivity pass; () = every node INT8.
    fp32_nodes: tuple[str, ...] | None = None
    sensitivity_images: int = 32
    # A node stays FP32 only when that alone raises the output SQNR by this much (2 dB: 37% less noise power).
    # Measured on the ants/bees MobileNetV2: one node gained 3.3 dB and restored FP32's validation answers;
    # the next ones gained about 1 dB each and cost speed (README, "INT8: graft export --quantize int8").
    min_gain_db: float = 2.0
    max_fp32_nodes: int = 3

    def __post_init__(self) -> None:
        if self.calibration_method not in METHODS:
            raise QuantizationError(
                f"calibration method {self.calibration_method!r}: choose one of {', '.join(METHODS)}"
            )
        if self.calibration_images < CALIBRATION_BATCH or self.sensitivity_images < 1:
            raise QuantizationError(
                f"calibration needs at least {CALIBRATION_BATCH} images and the sensitivity pass at least 1"
            )

    def as_record(self) -> dict[str, Any]:
        out = asdict(self)
        out["fp32_nodes"] = None if self.fp32_nodes is None else list(self.fp32_nodes)
        return out

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> QuantizeOptions:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in record.items() if k in known}
        if values.get("fp32_nodes") is not None:
            values["fp32_nodes"] = tuple(values["fp32_nodes"])
        return cls(**values)


def session(path: Path, threads: int = 0) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # QDQ models log a line per fused node otherwise
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def logits(sess: Any, x: np.ndarray, batch: int = 32) -> np.ndarray:
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs) if outs else np.empty((0, 0), np.float32)


class _Reader:
    """ONNX Runtime's CalibrationDataReader over an in-memory array, in equal batches.

    ``__len__`` and ``set_range`` (in batches) let MinMax calibrate in strides (``CalibStridedMinMax``):
    ONNX Runtime merges the ranges of each stride, so memory holds one stride's activations, not all of
    them. (Its other memory bound, ``CalibMaxIntermediateOutputs``, drops the batches collected before
    each clear in onnxruntime 1.32: calibration would then see only the last few batches.)
    """

    def __init__(self, x: np.ndarray, input_name: str) -> None:
        self.x, self.name = x, input_name
        self.i, self.end = 0, len(self)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= self.end:
            return None
        batch = self.x[self.i * CALIBRATION_BATCH : (self.i + 1) * CALIBRATION_BATCH]
        self.i += 1
        return {self.name: batch}

    def set_range(self, start_index: int, end_index: int) -> None:
        self.i, self.end = start_index, min(end_index, len(self))

    def __len__(self) -> int:
        return len(self.x) // CALIBRATION_BATCH

    def stride(self) -> int:
        """Batches per calibration stride: the largest of 4, 3, 2, 1 that divides the number of batches."""
        return next(d for d in (4, 3, 2, 1) if len(self) % d == 0)


class Quantizer:
    """One FP32 ONNX model, pre-processed and calibrated once; INT8 variants built from the cached ranges."""

    def __init__(self, fp32: Path, workdir: Path, method: str = "minmax") -> None:
        from onnxruntime.quantization import quant_pre_process

        self.workdir = Path(workdir)
        self.prepared = self.workdir / "prepared.onnx"
        quant_pre_process(str(fp32), str(self.prepared))
        self.cache = self.workdir / "calibration.json"
        self.method = method
        self._reader: _Reader | None = None

    def calibrate(self, x: np.ndarray) -> None:
        n = len(x) - len(x) % CALIBRATION_BATCH
        self._reader = _Reader(x[:n], session(self.prepared).get_inputs()[0].name)

    def build(self, out: Path, fp32_nodes: Sequence[str] = ()) -> Path:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[self.method]  # fmt: skip
        reader = None if self.cache.is_file() else self._reader
        if reader is None and not self.cache.is_file():
            raise QuantizationError("calibrate() first: there are no calibration ranges yet")
        strided = {"CalibStridedMinMax": reader.stride()} if reader is not None and self.method == "minmax" else {}
        quantize_static(
            str(self.prepared), str(out), reader,
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=list(fp32_nodes), calibrate_method=method,
            calibration_cache_path=str(self.cache),
            extra_options=strided,
        )  # fmt: skip
        return out

    def sensitivity(self, x: np.ndarray, options: QuantizeOptions) -> Sensitivity:
        reference = logits(session(self.prepared), x)
        variant_path = self.workdir / "variant.onnx"

        def variant(fp32_nodes: Sequence[str]) -> np.ndarray:
            return logits(session(self.build(variant_path, fp32_nodes)), x)

        return choose_fp32_nodes(
            variant, reference, weight_nodes(self.prepared), options.min_gain_db, options.max_fp32_nodes
        )


@dataclass(frozen=True)
class Comparison:
    images: int
    fp32_accuracy: float
    int8_accuracy: float
    top1_agreement: float

    @property
    def drop_points(self) -> float:
        return 100.0 * (self.fp32_accuracy - self.int8_accuracy)

    def passed(self, max_drop: float) -> bool:
        return round(self.drop_points, 6) <= max_drop  # 1 image of 100 is 1.0 points, not 1.0000000000000009

    def as_record(self, max_drop: float) -> dict[str, Any]:
        return {**asdict(self), "accuracy_drop_points": round(self.drop_points, 3),
                "max_accuracy_drop_points": max_drop, "passed": self.passed(max_drop)}  # fmt: skip


def compare(fp32: Path, int8: Path, x: np.ndarray, y: np.ndarray) -> Comparison:
    """Top-1 accuracy of both models and how often they agree, on labelled inputs."""
    a = logits(session(fp32), x).argmax(1)
    b = logits(session(int8), x).argmax(1)
    n = len(y)
    return Comparison(n, float((a == y).mean()), float((b == y).mean()), float((a == b).mean()))


def _images(run_dir: Path, options: QuantizeOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray, str | None]:
    """(calibration inputs, validation inputs, validation labels, data source) from the run's own data."""
    card = read_card(run_dir)
    split = run_split(card)
    if split is None:
        raise QuantizationError(
            f"INT8 calibration needs the run's own images, but its data ({card.lineage.dataset_path}) is not where"
            " training read it: put it back there, or export without --quantize"
        )
    xc, _ = tensors(card, [i.path for i in spread(split.train, options.calibration_images)])
    pos = {label: i for i, label in enumerate(card.labels)}
    known = [i for i in split.val if i.label in pos]
    xv, kept = tensors(card, [i.path for i in known])
    yv = np.array([pos[known[k].label] for k in kept], dtype=np.int64)
    if len(xc) < CALIBRATION_BATCH or len(xv) == 0:
        raise QuantizationError(
            f"too few images to quantize on: {len(xc)} for calibration (at least {CALIBRATION_BATCH}), {len(xv)}"
            " for validation (at least 1)"
        )
    return xc, xv, yv, card.lineage.dataset_path


def _quantize(fp32: Path, out: Path, xc: np.ndarray, xv: np.ndarray, yv: np.ndarray, options: QuantizeOptions
              ) -> tuple[Comparison, tuple[str, ...], Sensitivity | None]:  # fmt: skip
    """Calibrate, pick the FP32 nodes, build, compare; ``out`` is written only when the guard passes."""
    with tempfile.TemporaryDirectory(prefix="graft-int8-") as tmp:
        q = Quantizer(fp32, Path(tmp), options.calibration_method)
        q.calibrate(xc)
        picked: Sensitivity | None = None
        fp32_nodes = options.fp32_nodes
        if fp32_nodes is None:
            step = max(1, len(xc) // options.sensitivity_images)
            picked = q.sensitivity(xc[::step][: options.sensitivity_images], options)
            fp32_nodes = picked.fp32_nodes
        staged = q.build(Path(tmp) / ONNX_INT8_FILE, fp32_nodes)
        result = compare(fp32, staged, xv, yv)
        out.unlink(missing_ok=True)  # never leave an older INT8 model beside a failed check
        if result.passed(options.max_accuracy_drop):
            staged.replace(out)
    return result, fp32_nodes, picked


def quantize_run(run_dir: Path, options: QuantizeOptions | None = None) -> dict[str, Any]:
    """Write ``RUN_DIR/model.int8.onnx`` from ``model.onnx``, check it, and record it in ``model.json``."""
    import onnxruntime as ort

    run_dir, options = Path(run_dir), options or QuantizeOptions()
    t0 = time.perf_counter()
    fp32, out = run_dir / ONNX_FILE, run_dir / ONNX_INT8_FILE
    if not fp32.is_file():
        raise QuantizationError(f"{fp32} is missing: the INT8 model is made from the verified ONNX export")
    xc, xv, yv, source = _images(run_dir, options)
    result, fp32_nodes, picked = _quantize(fp32, out, xc, xv, yv, options)
    passed = result.passed(options.max_accuracy_drop)
    record: dict[str, Any] = {
        "file": ONNX_INT8_FILE if passed else None,
        "format": "QDQ",
        "weights": "int8, per output channel, symmetric",
        "activations": "uint8, per tensor, asymmetric",
        "onnxruntime": ort.__version__,
        "options": options.as_record(),
        "calibration": {
            "images": len(xc) - len(xc) % CALIBRATION_BATCH,
            "split": "train",
            "method": options.calibration_method,
            "source": source,
        },
        "fp32_nodes": list(fp32_nodes),
        "sensitivity": picked.as_record() if picked is not None else "skipped: FP32 nodes given",
        "validation": result.as_record(options.max_accuracy_drop),
        "weights_sha256": file_sha256(run_dir / read_card(run_dir).weights_file),
        "bytes": {"fp32": fp32.stat().st_size, "int8": out.stat().st_size if passed else None},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _record(run_dir, record)
    log.info(
        "INT8 vs FP32 on %d validation images: accuracy %.4f vs %.4f (drop %.2f points, allowed %.2f),"
        " top-1 agreement %.4f; FP32 nodes: %s",
        result.images, result.int8_accuracy, result.fp32_accuracy, result.drop_points, options.max_accuracy_drop,
        result.top1_agreement, list(fp32_nodes) or "none",
    )  # fmt: skip
    if not passed:
        raise QuantizationError(
            f"the INT8 model's validation accuracy is {result.int8_accuracy:.4f} against {result.fp32_accuracy:.4f}"
            f" in FP32 on {result.images} images: {result.drop_points:.2f} points lost, more than the"
            f" {options.max_accuracy_drop:g} allowed. Serve FP32 (export without --quantize), allow more with"
            " --max-accuracy-drop, or keep more nodes in FP32 (--int8-fp32-nodes)"
        )
    return record


def _record(run_dir: Path, record: dict[str, Any]) -> None:
    card = read_card(run_dir)
    data = card.model_dump()
    data.setdefault("export", {})["int8"] = record
    write_card(run_dir, type(card).model_validate(data))


def recorded_int8(run_dir: Path) -> dict[str, Any] | None:
    """The ``export.int8`` record of a run, or None."""
    extra = read_card(run_dir).model_extra or {}
    record = (extra.get("export") or {}).get("int8")
    return record if isinstance(record, dict) else None


def up_to_date(run_dir: Path, options: QuantizeOptions) -> bool:
    """True when ``model.int8.onnx`` passed its check, from these weights, with these options."""
    record = recorded_int8(run_dir)
    run_dir = Path(run_dir)
    if record is None or not (run_dir / ONNX_INT8_FILE).is_file():
        return False
    card = read_card(run_dir)
    return bool(
        record.get("validation", {}).get("passed")
        and record.get("options") == options.as_record()
        and record.get("weights_sha256") == file_sha256(run_dir / card.weights_file)
    )
