"""How a run is exported for serving, recorded in its ``model.json`` so the same choice can be made again.

``graft export`` records the archive's settings (``export.archive``: the ``model-config.yaml`` values and,
with ``--quantize int8``, the quantization options). The admin service reads the champion's record to
export a retrained candidate the same way (:func:`prepare_like`) and to judge each model as it serves
(:func:`serving_precision`): the INT8 model when the archive serves INT8.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from graft.core.artifact import MODEL_JSON, ONNX_FILE, UNAVERAGED_DIR, read_card, write_card
from graft.core.errors import ExportError
from training.quantize import QuantizeOptions, quantize_run, recorded_int8, up_to_date

log = logging.getLogger(__name__)

# Archive settings that describe the model rather than the machine: what a retrained candidate inherits.
INHERITED_KEYS = ("backend", "precision", "batch_size", "max_batch_delay_ms", "workers", "response_timeout_s",
                  "topk", "max_image_pixels", "max_body_bytes", "threads", "onnx_spinning", "decode", "fast_decode",
                  "max_instances", "warmup")  # fmt: skip


@dataclass(frozen=True)
class ExportSettings:
    """The archive's ``model-config.yaml`` values, and the INT8 quantization when it serves INT8."""

    model_config: dict[str, Any] = field(default_factory=dict)
    quantize: QuantizeOptions | None = None

    def __post_init__(self) -> None:
        precision = self.model_config.get("precision")
        if self.quantize is not None and self.model_config.get("backend", "onnx") != "onnx":
            raise ExportError("--quantize int8 makes an ONNX model: export with --backend onnx")
        if precision == "int8" and self.quantize is None:
            raise ExportError("handler precision int8 serves the quantized model: export with --quantize int8")

    @classmethod
    def build(cls, model_config: dict[str, Any] | None, quantize: QuantizeOptions | None) -> ExportSettings:
        """Settings from ``graft export``'s choices: ``--quantize int8`` means the handler serves INT8."""
        config = dict(model_config or {})
        if quantize is not None:
            config["precision"] = "int8"
        return cls(config, quantize)

    @property
    def int8(self) -> bool:
        return self.quantize is not None

    def as_record(self) -> dict[str, Any]:
        return {"model_config": dict(self.model_config),
                "quantize": self.quantize.as_record() if self.quantize else None}  # fmt: skip

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ExportSettings:
        config = {k: v for k, v in (record.get("model_config") or {}).items() if k in INHERITED_KEYS}
        q = record.get("quantize")
        return cls(config, QuantizeOptions.from_record(q) if isinstance(q, dict) else None)


def recorded_settings(run_dir: Path) -> ExportSettings | None:
    """What the run's archive was last exported with (``export.archive`` in ``model.json``), or None."""
    extra = read_card(run_dir).model_extra or {}
    record = (extra.get("export") or {}).get("archive")
    return ExportSettings.from_record(record) if isinstance(record, dict) else None


def record_settings(run_dir: Path, settings: ExportSettings) -> None:
    card = read_card(run_dir)
    data = card.model_dump()
    data.setdefault("export", {})["archive"] = settings.as_record()
    write_card(run_dir, type(card).model_validate(data))


def serving_precision(run_dir: Path) -> str:
    """``int8`` when the run's archive serves its INT8 model, else ``fp32``: how to judge it."""
    settings = recorded_settings(run_dir)
    return "int8" if settings is not None and settings.int8 else "fp32"


def ensure_int8(run_dir: Path, options: QuantizeOptions, export: bool = False) -> None:
    """``model.int8.onnx`` for these weights and options: reused when up to date, else made (and checked).

    With ``export``, ``model.onnx`` (what the INT8 model is made from) is exported and verified first, but only
    when the INT8 model must be made: on Kubernetes the training Job prepares a candidate and the admin then
    prepares it again, and an up-to-date INT8 model was made from an ONNX export of these very weights.
    """
    from training.export import export_onnx

    if up_to_date(run_dir, options) and (run_dir / ONNX_FILE).is_file():
        log.info("%s: the INT8 model is up to date (same weights, same options): reused", run_dir)
        return
    if export:
        export_onnx(run_dir)
    quantize_run(run_dir, options)


def prepare_like(run_dir: Path, champion_dir: Path | None) -> ExportSettings | None:
    """Give a candidate run the champion's export settings, and its INT8 model when the champion serves INT8.

    Called before the gate so that the gate judges the candidate as it would serve. A candidate whose INT8
    model fails its accuracy check raises :class:`graft.core.errors.QuantizationError`.
    """
    settings = recorded_settings(champion_dir) if champion_dir is not None and champion_dir.is_dir() else None
    if settings is None:
        return None
    record_settings(run_dir, settings)
    if settings.quantize is not None:
        ensure_int8(run_dir, settings.quantize, export=True)
    log.info("%s takes the champion's export settings: %s", run_dir, settings.as_record())
    _prepare_unaveraged(run_dir, settings)
    return settings


def _prepare_unaveraged(run_dir: Path, settings: ExportSettings) -> None:
    """The refit's own model beside an averaged candidate (training/distill.py) is judged too, and in the
    precision the candidate serves: an INT8 candidate against an FP32 refit would mix the quantization's error
    into the second judgement. Its INT8 model failing (the accuracy check, say) rejects nothing, as it never
    serves: it is then judged in FP32, with a warning."""
    own = run_dir / UNAVERAGED_DIR
    if not (own / MODEL_JSON).is_file():
        return
    if settings.quantize is not None:
        options = settings.quantize
        picked = (recorded_int8(run_dir) or {}).get("fp32_nodes")
        if options.fp32_nodes is None and isinstance(picked, list):
            # Averaging is head-only: the two share every backbone node, so the candidate's sensitivity pass
            # (most of the quantization's time) chose for both.
            options = replace(options, fp32_nodes=tuple(str(n) for n in picked))
        try:
            ensure_int8(own, options, export=True)
        except ExportError as e:  # QuantizationError included
            log.warning("%s: the refit's own model is judged in FP32: its INT8 model failed (%s)", own, e)
            return
    record_settings(own, settings)
