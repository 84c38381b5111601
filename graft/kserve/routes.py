"""graft's version management on the runtime's HTTP port (management key): the admin's KServe rollout
(admin/rollouts/kserve.py) drives these, as the TorchServe rollout drives TorchServe's management API.

    GET    /graft/v1/models                              every model: default and loaded versions
    GET    /graft/v1/models/NAME
    POST   /graft/v1/models/NAME/versions/VERSION        load NAME-VERSION from the model store (waits)
    PUT    /graft/v1/models/NAME/default/VERSION         VERSION answers NAME from now on
    DELETE /graft/v1/models/NAME/versions/VERSION        stop serving it (409 for the default)
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from graft.core.errors import GraftError
from graft.kserve.errors import ServedError, error_body
from graft.kserve.versions import VersionSet

# Names and versions as graft export writes them; anything else never reaches the store lookup.
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def _checked(name: str, version: str | None = None) -> None:
    for what, value in (("model name", name), ("version", version)):
        if value is not None and not _TOKEN.match(value):
            raise HTTPException(400, f"{what} {value[:40]!r} is not valid: letters, digits, '.', '_', '-'")


def management_router(versions: VersionSet) -> APIRouter:
    router = APIRouter(prefix="/graft/v1")

    @router.get("/models")
    async def models() -> Any:
        return {"models": versions.describe_all()}

    @router.get("/models/{name}")
    async def model(name: str) -> Any:
        _checked(name)
        return versions.describe(name)

    @router.post("/models/{name}/versions/{version}")
    async def load(name: str, version: str) -> Any:
        _checked(name, version)
        created = await versions.load(name, version)
        return JSONResponse(versions.describe(name), status_code=201 if created else 200)

    @router.put("/models/{name}/default/{version}")
    async def set_default(name: str, version: str) -> Any:
        _checked(name, version)
        await versions.set_default(name, version)
        return versions.describe(name)

    @router.delete("/models/{name}/versions/{version}")
    async def retire(name: str, version: str) -> Any:
        _checked(name, version)
        await versions.retire(name, version)
        return versions.describe(name)

    return router


async def served_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServedError)
    # "error": the Open Inference Protocol's (and KServe's) error field, which OIP clients such as tritonclient read.
    return JSONResponse({**exc.body, "error": str(exc.body.get("message", ""))}, status_code=exc.status)


async def graft_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GraftError)
    status = int(exc.status_code)
    reason = str(getattr(exc, "reason", "internal_error" if status >= 500 else "bad_request"))
    body = error_body(status, type(exc).__name__, reason, str(exc))
    return JSONResponse({**body, "error": str(exc)}, status_code=status)


_VERSION_PATH = re.compile(r"^/v2/models/([^/]+)/versions/([^/]+)(/infer|/ready)?$")


class VersionPathMiddleware:
    """``/v2/models/NAME/versions/V[/infer|/ready]`` -> ``/v2/models/NAME-vV[...]`` (KServe refuses the
    version path itself; the version is a model of its own here)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (m := _VERSION_PATH.match(str(scope.get("path", "")))):
            path = f"/v2/models/{m.group(1)}-v{m.group(2)}{m.group(3) or ''}"
            scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)


def v2_infer_router(dataplane: Any) -> APIRouter:
    """``POST /v2/models/NAME/infer`` ahead of KServe's own route, for the binary data extension.

    KServe 0.21 turns a binary BYTES input back into UTF-8 text before the model sees it, so an image sent
    by tritonclient with ``binary_data=True`` fails there with a 500. Here the raw bytes stay raw
    (``InferInput`` deserialises them on ``as_numpy``); JSON requests take KServe's own decoding.
    """
    import orjson
    from fastapi.responses import Response
    from kserve.protocol.infer_type import InferInput, InferRequest
    from kserve.protocol.rest.v2_datamodels import InferenceRequest
    from pydantic import ValidationError

    router = APIRouter()

    @router.post("/v2/models/{model_name}/infer")
    async def infer(model_name: str, request: Request) -> Any:
        body = await request.body()
        headers = dict(request.headers)
        await dataplane.get_model(model_name)  # ModelNotFound -> KServe's 404
        length = headers.get("inference-header-content-length")
        try:
            if length is not None:
                infer_request = _binary_request(body, int(length), model_name, InferInput, InferRequest, orjson)
            else:
                infer_request = InferRequest.from_inference_request(InferenceRequest.model_validate_json(body),
                                                                    model_name)  # fmt: skip
        except (ValueError, KeyError, TypeError, ValidationError, orjson.JSONDecodeError) as e:
            raise ServedError(400, error_body(400, "BadInputError", "bad_request",
                                              f"not an OIP v2 inference request: {str(e)[:300]}")) from e  # fmt: skip
        response, response_headers = await dataplane.infer(model_name=model_name, request=infer_request,
                                                           headers=headers)  # fmt: skip
        encoded, more = dataplane.encode(model_name=model_name, response=response, headers=headers, req_attributes={})
        response_headers.update(more)
        response_headers.pop("content-length", None)
        if isinstance(encoded, bytes):
            response_headers.setdefault("content-type", "application/octet-stream")
            return Response(content=encoded, headers=response_headers)
        return Response(content=orjson.dumps(encoded), media_type="application/json", headers=response_headers)

    return router


def _binary_request(body: bytes, json_length: int, model_name: str, input_cls: Any, request_cls: Any,
                    orjson: Any) -> Any:  # fmt: skip
    """An ``InferRequest`` from the binary extension's framing: JSON header, then each input's raw bytes."""
    if not 0 < json_length <= len(body):
        raise ValueError(f"inference-header-content-length {json_length} does not fit a {len(body)}-byte body")
    doc = orjson.loads(body[:json_length])
    start, inputs = json_length, []
    for spec in doc["inputs"]:
        parameters = spec.get("parameters") or {}
        inp = input_cls(name=spec["name"], shape=spec["shape"], datatype=spec["datatype"], parameters=parameters)
        if spec.get("data") is not None:
            inp.data = spec["data"]
        else:
            size = int(parameters["binary_data_size"])
            if size < 0 or start + size > len(body):
                raise ValueError(f"input {spec['name']!r}: binary_data_size {size} runs past the body")
            inp._raw_data = body[start : start + size]
            start += size
        inputs.append(inp)
    return request_cls(model_name=model_name, infer_inputs=inputs, request_id=doc.get("id"),
                       parameters=doc.get("parameters"))  # fmt: skip
