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
    return JSONResponse(exc.body, status_code=exc.status)


async def graft_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GraftError)
    status = int(exc.status_code)
    reason = str(getattr(exc, "reason", "internal_error" if status >= 500 else "bad_request"))
    return JSONResponse(error_body(status, type(exc).__name__, reason, str(exc)), status_code=status)


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
