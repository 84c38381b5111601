"""Handler settings: the ``handler:`` section of an archive's ``model-config.yaml``, in one place.

``graft export`` writes ``model-config.yaml`` with :func:`model_config_yaml`; the handler reads it back
with :func:`settings_from_yaml`. Training (export), serving and the launcher share this schema.
Missing keys take safe defaults; a value of the wrong kind fails the
worker's load (a misconfigured archive must not serve with silently different limits).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from graft.core.errors import ArtifactError
from graft.core.images import MAX_IMAGE_PIXELS

BACKENDS = ("torch", "onnx")
DECODERS = ("auto", "cpu", "gpu")
PRECISIONS = ("auto", "fp16", "bf16", "fp32", "int8")
# Precisions that need a particular backend: int8 is the statically quantized ONNX model (model.int8.onnx).
PRECISION_BACKENDS = {"int8": "onnx"}


@dataclass(frozen=True)
class HandlerSettings:
    # PyTorch eager is the default because model.safetensors is always in the archive; model.onnx may not be.
    backend: str = "torch"
    topk: int = 5
    # Explicit decompression-bomb guard, below PIL's process-wide 89 Mpx warning threshold.
    max_image_pixels: int = MAX_IMAGE_PIXELS
    # Per item, on the encoded image bytes (and on the base64 text before decoding it).
    max_body_bytes: int = 10 * 1024 * 1024
    # Intra-op threads per worker; 0 = cores / workers so several workers do not oversubscribe the CPU.
    threads: int = 0
    # ONNX Runtime's intra-op threads busy-wait for the next op when on. Off by default: a worker shares its
    # cores with TorchServe's frontend, other workers and the admin, and a spinning thread burns the core
    # another process needed (README, handler settings: 210 vs 161-169 img/s at concurrency 32 on 2 cores).
    onnx_spinning: bool = False
    # JPEG decoding on the GPU (nvjpeg) when the worker has one: auto = yes when on CUDA.
    decode: str = "auto"
    # Autocast dtype on CUDA: auto = fp16 (bf16 on request, fp32 turns autocast off); ignored on CPU.
    # int8: the ONNX backend serves model.int8.onnx (graft export --quantize int8), on CPU and GPU alike.
    precision: str = "auto"
    # Reduced-size JPEG decoding (PIL draft) when the image is at least twice the resize target.
    fast_decode: bool = True
    # KServe v1 bodies: the most instances one request may carry.
    max_instances: int = 64
    # Run one dummy batch at load so the first client does not pay for lazy initialisation.
    warmup: bool = True
    # Capture, off by default: the share of served inputs kept (with the answers) for the review queue, the
    # folder they go to, and the disk they may use (oldest dropped first). GRAFT_CAPTURE_RATE,
    # GRAFT_CAPTURE_DIR and GRAFT_CAPTURE_BUDGET_MB in the worker's environment win (graft serve sets them).
    capture_rate: float = 0.0
    capture_dir: str = ""
    capture_budget_mb: int = 1024

    def __post_init__(self) -> None:
        _check_choice("backend", self.backend, BACKENDS)
        _check_choice("decode", self.decode, DECODERS)
        _check_choice("precision", self.precision, PRECISIONS)
        needed = PRECISION_BACKENDS.get(self.precision)
        if needed is not None and self.backend != needed:
            raise ArtifactError(
                f"model-config.yaml handler.precision={self.precision} needs backend {needed} (got {self.backend}):"
                f" export with --backend {needed}, or choose another precision"
            )
        for name in ("topk", "max_image_pixels", "max_body_bytes", "max_instances"):
            if getattr(self, name) < 1:
                raise ArtifactError(f"model-config.yaml handler.{name} must be >= 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise ArtifactError(f"model-config.yaml handler.threads must be >= 0 (0 = automatic), got {self.threads}")
        if not 0.0 <= self.capture_rate <= 1.0:
            raise ArtifactError(f"handler.capture_rate must be between 0 and 1, got {self.capture_rate}")
        if self.capture_budget_mb < 1:
            raise ArtifactError(f"handler.capture_budget_mb must be >= 1, got {self.capture_budget_mb}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ArtifactError(f"model-config.yaml handler.{name}={value!r}: choose one of {', '.join(choices)}")


_PATHS = ("capture_dir",)  # strings that are not choices: kept as written


def _coerce(name: str, value: Any, default: Any) -> Any:
    """YAML gives ints, floats, bools and strings already; refuse anything else instead of guessing."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, str):
        return value if name in _PATHS else value.lower()
    raise ArtifactError(f"model-config.yaml handler.{name}={value!r}: expected {type(default).__name__}")


def settings_from_yaml(model_yaml_config: Mapping[str, Any] | None) -> HandlerSettings:
    """Settings from TorchServe's parsed ``model-config.yaml`` (``context.model_yaml_config``)."""
    section = (model_yaml_config or {}).get("handler") or {}
    if not isinstance(section, Mapping):
        raise ArtifactError(f"model-config.yaml 'handler' must be a mapping, got {type(section).__name__}")
    defaults = HandlerSettings()
    known = {f.name for f in fields(HandlerSettings)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ArtifactError(f"model-config.yaml handler has unknown keys {unknown}; known: {sorted(known)}")
    values = {k: _coerce(k, v, getattr(defaults, k)) for k, v in section.items()}
    return HandlerSettings(**values)


CAPTURE_ENV = {"capture_rate": "GRAFT_CAPTURE_RATE", "capture_dir": "GRAFT_CAPTURE_DIR",
               "capture_budget_mb": "GRAFT_CAPTURE_BUDGET_MB"}  # fmt: skip


def with_environment(settings: HandlerSettings, environ: Mapping[str, str]) -> HandlerSettings:
    """The capture settings from the worker's environment, where set, over the archive's."""
    values: dict[str, Any] = {}
    for name, var in CAPTURE_ENV.items():
        raw = environ.get(var, "").strip()
        if not raw:
            continue
        kind = type(getattr(settings, name))
        try:
            values[name] = kind(raw)
        except ValueError as e:
            raise ArtifactError(f"{var}={raw!r}: expected {kind.__name__}") from e
    return replace(settings, **values) if values else settings


def model_config_yaml(
    backend: str = "onnx",
    batch_size: int = 8,
    max_batch_delay_ms: int = 20,
    workers: int = 1,
    response_timeout_s: int = 120,
    **handler: Any,
) -> str:
    """The ``model-config.yaml`` text for an archive: TorchServe's keys plus our ``handler:`` section.

    ``handler`` takes any :class:`HandlerSettings` field (``topk``, ``max_image_pixels``, ``threads``...).
    The settings are validated here, so an export cannot write an archive its handler would refuse.
    """
    import yaml

    settings = HandlerSettings(backend=backend, **handler)
    doc = {
        "minWorkers": workers,
        "maxWorkers": workers,
        "batchSize": batch_size,
        "maxBatchDelay": max_batch_delay_ms,
        "responseTimeout": response_timeout_s,
        "handler": asdict(settings),
    }
    text: str = yaml.safe_dump(doc, sort_keys=False)
    return text
