"""A :class:`kserve.Model` around one archive version: KServe v1 and Open Inference Protocol v2 bodies in,
graft's answers out, every image through the model's dynamic batcher.

* v1 (``/v1/models/NAME:predict``): the body goes to the handler as it would through TorchServe
  (``{"instances": [{"data": "<base64>"}]}`` or ``{"data": ...}``); the answer is the handler's JSON.
* v2 (REST ``/v2/models/NAME/infer`` and gRPC ``ModelInfer``): one ``BYTES`` input, one encoded image per
  element (the binary extension or gRPC raw contents carry bytes; JSON elements are base64 text). Outputs
  ``labels`` (BYTES) and ``probabilities`` (FP32), both ``[N, topk]``, most probable first; the request
  parameter ``topk`` chooses k. A bad image fails the request with its 4xx, naming the element.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import kserve
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from graft.core.capture import NO_CAPTURE_HEADER
from graft.kserve.batcher import Batcher
from graft.kserve.engine import Answer, ArchiveEngine
from graft.kserve.errors import ServedError, error_body

# Request headers the handler reads (capture exemption, top-k, request id); the rest stay out of it.
_FORWARDED = (NO_CAPTURE_HEADER.lower(), "x-topk", "x-request-id")


def _forwarded(headers: Mapping[str, Any] | None) -> dict[str, str]:
    return {k.lower(): str(v) for k, v in (headers or {}).items() if k.lower() in _FORWARDED}


def _bad(message: str, status: int = 400, reason: str = "bad_request") -> ServedError:
    return ServedError(status, error_body(status, "BadInputError", reason, message))


class GraftModel(kserve.Model):
    """``name`` is the KServe model name this object answers to (a version's own name, or the alias)."""

    def __init__(self, name: str, engine: ArchiveEngine, batcher: Batcher) -> None:
        super().__init__(name)
        self.engine = engine
        self.batcher = batcher
        self.ready = True

    def load(self) -> bool:
        self.ready = True
        return True

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": "image", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]}]  # fmt: skip

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        if isinstance(payload, InferRequest):
            return await self._v2(payload, headers)
        if isinstance(payload, Mapping):
            return await self._v1(payload, headers)
        raise _bad(f"unsupported request body {type(payload).__name__}: send KServe v1 JSON or an OIP v2 request")

    async def _v1(self, body: Mapping[str, Any], headers: Mapping[str, Any] | None) -> Any:
        hdrs = {**_forwarded(headers), "content-type": "application/json"}
        instances = body.get("instances")
        weight = len(instances) if isinstance(instances, list) else 1
        weight = min(weight, self.engine.max_instances)
        (answer,) = await self.batcher.submit([{"body": dict(body)}], [hdrs], weight=weight)
        if answer.status != 200:
            raise ServedError(answer.status, answer.body)
        return answer.body

    async def _v2(self, request: InferRequest, headers: Mapping[str, Any] | None) -> InferResponse:
        images = self._images(request)
        k = _topk(request.parameters)
        item_headers = {**_forwarded(headers), "content-type": "application/octet-stream"}
        items = [{"body": img, **({"topk": k} if k is not None else {})} for img in images]
        answers: list[Answer] = await self.batcher.submit(items, [item_headers] * len(items))
        for j, a in enumerate(answers):
            if a.status != 200:
                body = dict(a.body)
                body["message"] = f"inputs[0][{j}]: {body.get('message', '')}"
                raise ServedError(a.status, body)
        labels = [[p["label"] for p in a.body["predictions"]] for a in answers]
        scores = [[float(p["score"]) for p in a.body["predictions"]] for a in answers]
        width = len(labels[0]) if labels else 0
        outputs = [
            InferOutput("labels", [len(labels), width], "BYTES", [s for row in labels for s in row]),
            InferOutput("probabilities", [len(scores), width], "FP32", [v for row in scores for v in row]),
        ]
        return InferResponse(request.id or "", self.name, outputs, model_version=self.engine.version,
                             from_grpc=request.from_grpc, use_binary_outputs=request.use_binary_outputs)  # fmt: skip

    def _images(self, request: InferRequest) -> list[bytes]:
        if len(request.inputs) != 1:
            raise _bad(f"send one BYTES input of encoded images; got {len(request.inputs)} inputs")
        inp = request.inputs[0]
        if inp.datatype != "BYTES":
            raise _bad(f"input {inp.name!r} is {inp.datatype}: images go in a BYTES tensor, one encoded image each")
        try:
            elements = list(inp.as_numpy().reshape(-1))
        except Exception as e:  # malformed shapes or binary framing: the client's mistake, said plainly
            raise _bad(f"input {inp.name!r} cannot be read as a BYTES tensor: {e}") from e
        if not elements:
            raise _bad("the BYTES input holds no image", reason="empty_body")
        if len(elements) > self.engine.max_instances:
            raise _bad(f"{len(elements)} images in one request; the limit is {self.engine.max_instances}", 413,
                       "body_too_large")  # fmt: skip
        return [_element_bytes(x, j, self.engine.max_body_bytes) for j, x in enumerate(elements)]


def _element_bytes(x: Any, j: int, max_bytes: int) -> bytes:
    if isinstance(x, bytes | bytearray):
        return bytes(x)
    if isinstance(x, str):  # JSON BYTES elements are text: base64 of the image
        if len(x) > (max_bytes + 2) // 3 * 4:
            raise _bad(f"inputs[0][{j}] decodes to more than {max_bytes} bytes, the per-image limit", 413,
                       "body_too_large")  # fmt: skip
        try:
            return base64.b64decode(x, validate=True)
        except (binascii.Error, ValueError) as e:
            raise _bad(f"inputs[0][{j}] is text but not base64 ({e}): send the image bytes (binary extension) "
                       "or base64 text", reason="bad_base64") from e  # fmt: skip
    raise _bad(f"inputs[0][{j}] is {type(x).__name__}, not image bytes")


def _topk(parameters: Any) -> int | None:
    if not parameters or "topk" not in parameters:
        return None
    value = parameters["topk"]
    if hasattr(value, "WhichOneof"):  # a gRPC InferParameter
        which = value.WhichOneof("parameter_choice")
        value = getattr(value, which) if which else None
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        raise _bad(f"parameter topk must be a positive integer, got {str(value)[:20]!r}")
    k = int(value)
    if not 1 <= k <= 1000:
        raise _bad(f"parameter topk must be between 1 and 1000, got {k}")
    return k
