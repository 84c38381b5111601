"""Inference backends: PyTorch eager and ONNX Runtime, same input (float NCHW) and output (logits).

Both are built from the unpacked archive directory. PyTorch weights load through
``graft.core.artifact.load_model`` (safetensors, no pickle), never through ``torch.load``.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch

from graft.core.artifact import ONNX_FILE, ONNX_INT8_FILE, load_model
from graft.core.errors import ArtifactError

log = logging.getLogger(__name__)


class Backend(Protocol):
    name: str
    device: torch.device

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Float32 logits on the CPU for a float32 NCHW batch (on ``device``)."""


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype on CUDA; None on CPU or with fp32.

    ``auto`` is fp16: tensor cores on every CUDA card since Volta, and 3 more mantissa bits than bf16,
    which keeps scores closest to the fp32 CPU answers (autocast runs softmax-like ops in fp32 anyway).
    """
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    return torch.float16


class TorchBackend:
    name = "torch"

    def __init__(self, model_dir: Path, device: torch.device, precision: str = "auto") -> None:
        model, _card = load_model(model_dir, str(device))
        self.device = device
        self.amp_dtype = autocast_dtype(device, precision)
        if device.type == "cuda":
            # channels_last lets cuDNN pick its NHWC kernels (tensor cores) for the convolutions.
            model = model.to(memory_format=torch.channels_last)
        self.model = model

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        amp = (
            torch.autocast(device_type="cuda", dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()
        )
        with torch.inference_mode(), amp:
            out = self.model(batch)
        return out.float().cpu()


def onnx_providers(device: torch.device) -> list[Any]:
    """CUDA execution provider first when this onnxruntime build has it and the worker has a GPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers: list[Any] = []
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        _preload_cuda_libraries(ort)
        providers.append(("CUDAExecutionProvider", {"device_id": device.index or 0}))
    elif device.type == "cuda":
        log.warning("worker has %s but onnxruntime has no CUDA provider (install onnxruntime-gpu): using CPU", device)
    providers.append("CPUExecutionProvider")
    return providers


def _preload_cuda_libraries(ort: Any) -> None:
    """Let onnxruntime-gpu find CUDA and cuDNN in the pip packages PyTorch brought (no system CUDA needed)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as e:  # best effort: a system-wide CUDA may still satisfy the provider
        log.warning("onnxruntime could not preload CUDA libraries from pip packages: %s", e)


class OnnxBackend:
    """ONNX Runtime on ``model.onnx``, or on ``model.int8.onnx`` (QDQ INT8) with ``file=ONNX_INT8_FILE``."""

    def __init__(self, model_dir: Path, device: torch.device, threads: int, file: str = ONNX_FILE,
                 spinning: bool = False) -> None:  # fmt: skip
        import onnxruntime as ort

        self.name = "onnx-int8" if file == ONNX_INT8_FILE else "onnx"
        path = Path(model_dir) / file
        if not path.is_file():
            fix = "export with --quantize int8" if file == ONNX_INT8_FILE else "export it or use backend 'torch'"
            raise ArtifactError(f"backend {self.name!r} needs {file} in the archive; {fix}")
        opts = ort.SessionOptions()
        # ORT's default takes every core; with several workers that oversubscribes the machine.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle pool threads sleep instead of spinning (HandlerSettings.onnx_spinning says why).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=onnx_providers(device))
        self.input_name = self.session.get_inputs()[0].name
        self.device = device
        log.info("onnxruntime providers: %s", self.session.get_providers())

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.detach().float().cpu().contiguous().numpy()
        (out,) = self.session.run(None, {self.input_name: x})[:1]
        return torch.from_numpy(out).float()


def make_backend(name: str, model_dir: Path, device: torch.device, threads: int, precision: str,
                 onnx_spinning: bool = False) -> Backend:  # fmt: skip
    if name == "onnx":
        file = ONNX_INT8_FILE if precision == "int8" else ONNX_FILE
        return OnnxBackend(model_dir, device, threads, file, spinning=onnx_spinning)
    return TorchBackend(model_dir, device, precision)
