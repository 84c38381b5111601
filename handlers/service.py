"""The image classification service TorchServe drives: one ``handle`` call per batch of requests.

Each request of a batch is answered on its own: a bad one gets its 4xx status and a JSON error
(through ``context.set_response_status(..., idx=i)``) while the others are predicted together.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

import torch

from graft.core.artifact import read_card
from graft.core.capture import NO_CAPTURE_HEADER
from graft.core.errors import BadInputError, GraftError
from graft.core.handler_settings import HandlerSettings, settings_from_yaml, with_environment
from handlers.backends import Backend, make_backend
from handlers.capture import CaptureWriter
from handlers.metrics import HandlerMetrics
from handlers.preprocess import Preprocessor
from handlers.requests import ParsedRequest, parse_request
from handlers.response import error_body, prediction_body, probabilities, topk

log = logging.getLogger(__name__)


def pick_device(gpu_id: Any) -> torch.device:
    """``cuda:<gpu_id>`` when TorchServe assigned a GPU and CUDA works, else the CPU."""
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


def limit_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    # Only settable before the first inter-op parallel work; a reused process may have done some.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def worker_threads(settings: HandlerSettings, model_yaml_config: Mapping[str, Any] | None) -> int:
    """Threads one worker may use: the explicit setting, else the cores shared by the model's workers."""
    if settings.threads:
        return settings.threads
    cfg = model_yaml_config or {}
    try:
        workers = max(1, int(cfg.get("maxWorkers") or cfg.get("minWorkers") or 1))
    except (TypeError, ValueError):
        workers = 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // workers)



def _request_id(context: Any, idx: int) -> str:
    ids = getattr(context, "request_ids", None) or {}
    return str(ids.get(idx, "")) if isinstance(ids, dict) else ""


def no_capture_header(context: Any, idx: int) -> str | None:
    """The value of request ``idx``'s ``X-Graft-No-Capture`` header (the capture writer judges it)."""
    wanted = NO_CAPTURE_HEADER.lower()
    for k, v in _headers(context, idx).items():
        if str(k).lower() == wanted:
            return v.decode("latin-1") if isinstance(v, bytes | bytearray) else str(v)
    return None


def _model_version(context: Any) -> str:
    manifest = getattr(context, "manifest", None) or {}
    return str((manifest.get("model") or {}).get("modelVersion", "0"))


def _headers(context: Any, idx: int) -> dict[str, Any]:
    try:
        return dict(context.get_all_request_header(idx) or {})
    except (AttributeError, IndexError, KeyError, TypeError):
        return {}


class ImageClassifierService:
    def __init__(self) -> None:
        self.initialized = False

    def initialize(self, context: Any) -> None:
        props = context.system_properties
        model_dir = Path(props["model_dir"])
        self.settings: HandlerSettings = with_environment(settings_from_yaml(context.model_yaml_config), os.environ)
        self.device = pick_device(props.get("gpu_id"))
        threads = worker_threads(self.settings, context.model_yaml_config)
        limit_threads(threads)
        self.card = read_card(model_dir)
        self.model_name = str(context.model_name)
        self.model_version = _model_version(context)
        self.backend: Backend = make_backend(
            self.settings.backend, model_dir, self.device, threads, self.settings.precision, self.settings.onnx_spinning
        )
        gpu_decode = self.device.type == "cuda" and self.settings.decode in ("auto", "gpu")
        self.preprocess = Preprocessor(
            self.card.preprocessing, self.device, self.settings.max_image_pixels, self.settings.fast_decode, gpu_decode
        )
        self.metrics = HandlerMetrics(context.metrics, self.model_name, self.model_version, self.backend.name)
        self.capture = self._capture_writer()
        if self.settings.warmup:
            self._warmup(int(props.get("batch_size") or 1))
        self.metrics.started()
        self.initialized = True
        log.info(
            "%s v%s ready: backend=%s device=%s threads=%d gpu_decode=%s classes=%d",
            self.model_name, self.model_version, self.backend.name, self.device, threads, gpu_decode,
            len(self.card.labels),
        )

    def _capture_writer(self) -> CaptureWriter | None:
        st = self.settings
        if st.capture_rate <= 0 or not st.capture_dir:
            return None
        log.info("capturing %.1f%% of inputs into %s (budget %d MB)", 100 * st.capture_rate, st.capture_dir,
                 st.capture_budget_mb)  # fmt: skip
        return CaptureWriter(Path(st.capture_dir), self.model_name, self.model_version, self.card.labels,
                             st.capture_rate, st.capture_budget_mb * 2**20, self.metrics.captured)  # fmt: skip

    def _warmup(self, batch_size: int) -> None:
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (320, 240), (120, 90, 60)).save(buf, format="JPEG")
        (tensor,) = self.preprocess([buf.getvalue()])
        if not isinstance(tensor, torch.Tensor):
            raise GraftError(f"warm-up preprocessing failed: {tensor}")
        for n in sorted({1, max(1, batch_size)}):
            self.backend.logits(tensor.unsqueeze(0).expand(n, -1, -1, -1).contiguous())

    # ------------------------------------------------------------------ per batch

    def handle(self, data: list[Any], context: Any) -> list[str]:
        try:
            out, statuses = self._handle(data, context)
        except Exception:
            # The runtime answers every request of a failed batch with a 5xx: count them here, as 500.
            self.metrics.answered([500] * len(data))
            raise
        self.metrics.answered(statuses)
        return out

    def _handle(self, data: list[Any], context: Any) -> tuple[list[str], list[int]]:
        t0 = time.perf_counter()
        requests: dict[int, ParsedRequest] = {}
        errors: dict[int, GraftError] = {}
        for i, item in enumerate(data):
            parsed = self._parse(i, item, context)
            if isinstance(parsed, ParsedRequest):
                requests[i] = parsed
            else:
                errors[i] = parsed
        tensors = self._preprocess(requests, errors)
        self.metrics.preprocess(time.perf_counter() - t0)
        rows = self._infer([t for ts in tensors.values() for t in ts])
        n_images = len(rows)
        self.metrics.predicted([self.card.labels[int(r.argmax())] for r in rows])
        out = []
        for i in range(len(data)):
            if i in errors:
                out.append(self._error(context, i, errors[i]))
            else:
                mine, rows = rows[: len(tensors[i])], rows[len(tensors[i]) :]
                out.append(self._answer(context, i, requests[i], mine, n_images))
                if self.capture is not None and not self.capture.exempt(no_capture_header(context, i)):
                    for payload, row in zip(requests[i].payloads, mine, strict=True):
                        self.capture.offer(payload, row.tolist(), _request_id(context, i))
        return out, [int(errors[i].status_code) if i in errors else 200 for i in range(len(data))]

    def _preprocess(self, requests: dict[int, ParsedRequest], errors: dict[int, GraftError]) -> dict[int, list[Any]]:
        """Decode every image of the batch at once; a request with any bad image moves to ``errors``."""
        owners = [(i, j) for i, req in requests.items() for j in range(len(req.payloads))]
        results = self.preprocess([p for req in requests.values() for p in req.payloads])
        tensors: dict[int, list[Any]] = {i: [] for i in requests}
        for (i, j), result in zip(owners, results, strict=True):
            if isinstance(result, GraftError):
                # One HTTP response per request: a KServe body fails whole, naming its bad instance.
                errors.setdefault(i, _for_instance(result, j) if requests[i].kserve else result)
            else:
                tensors[i].append(result)
        return {i: ts for i, ts in tensors.items() if i not in errors}

    def _parse(self, idx: int, item: Any, context: Any) -> ParsedRequest | GraftError:
        try:
            if not isinstance(item, dict):
                raise BadInputError(f"unexpected request item {type(item).__name__}")
            limits = (self.settings.max_body_bytes, self.settings.max_instances)
            return parse_request(item, _headers(context, idx), *limits)
        except BadInputError as e:
            return e
        except Exception as e:  # a parsing bug must fail this request only
            log.exception("request %d could not be parsed", idx)
            return GraftError(f"could not read this request: {type(e).__name__}")

    def _infer(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        if not tensors:
            return []
        t0 = time.perf_counter()
        logits = self.backend.logits(torch.stack(tensors))
        self.metrics.inference(time.perf_counter() - t0, len(tensors))
        return list(probabilities(logits))

    def _answer(self, context: Any, idx: int, req: ParsedRequest, rows: list[torch.Tensor], batch: int) -> str:
        k = req.topk or self.settings.topk
        per_instance = [topk(row, self.card.labels, k) for row in rows]
        _content_type(context, idx)
        return prediction_body(self.model_name, self.model_version, per_instance, req.kserve, batch)

    def _error(self, context: Any, idx: int, error: GraftError) -> str:
        status = int(error.status_code)
        self.metrics.rejected(getattr(error, "reason", "internal_error"))
        log.info("request %d refused with %d: %s", idx, status, error)
        context.set_response_status(code=status, phrase=HTTPStatus(status).phrase, idx=idx)
        _content_type(context, idx)
        return error_body(error, status)


def _for_instance(error: GraftError, j: int) -> GraftError:
    """The same error, its message naming the KServe instance that caused it."""
    return type(error)(f"instances[{j}]: {error}")


def _content_type(context: Any, idx: int) -> None:
    # A context without per-request processors (simple test doubles) has nowhere to put it.
    with contextlib.suppress(AttributeError, IndexError, KeyError, TypeError):
        context.set_response_content_type(idx, "application/json")
