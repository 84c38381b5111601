"""``build_api(settings)``: the admin's JSON API as a FastAPI application (``admin/app.py`` adds the
console). Nothing is built at import time.

Errors are mapped to HTTP in one place: every :class:`graft.errors.GraftError` answers with its
``status_code`` and the JSON body ``{"error": {"type", "status", "message"}}``; FastAPI's own
validation and routing errors use the same shape, and an unexpected exception is a 500 with no
traceback in the body.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from admin.api import audit, drift, erasures, jobs, labels, models, review, samples
from admin.api.auth import TokenAuth
from admin.api.guard import Guard
from admin.api.sessions import SessionStore, SignInThrottle
from admin.domain.drift import ProbabilitiesFn, default_probabilities
from admin.domain.jobs import EvaluateFn, default_evaluate
from admin.domain.promotion import ExportFn, default_export
from admin.domain.service import AdminService
from admin.rollouts.base import Rollout
from admin.runners.base import JobRunner
from admin.settings import AdminSettings, load_settings
from graft import __version__
from graft.core.errors import GraftError

log = logging.getLogger(__name__)


def error_response(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"type": type_, "status": status, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _graft_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GraftError)
    status = int(getattr(exc, "status_code", 500))
    if status >= 500:
        log.error("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return error_response(status, type(exc).__name__, str(exc), headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return error_response(422, "ValidationError", "; ".join(parts) or "invalid request")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, "HTTPError", str(exc.detail), dict(exc.headers or {}) or None)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "InternalError", "internal error; the service log has the details")


def build_api(
    settings: AdminSettings | None = None,
    *,
    runner: JobRunner | None = None,
    rollout: Rollout | None = None,
    evaluate: EvaluateFn = default_evaluate,
    export: ExportFn = default_export,
    probabilities: ProbabilitiesFn = default_probabilities,
) -> FastAPI:
    """Build the app and its service (SQLite opened, interrupted jobs failed, initial model imported).

    ``runner``/``rollout``/``evaluate``/``export``/``probabilities`` replace the defaults chosen from the settings.
    """
    settings = settings or load_settings()
    settings.check()  # refuses to start without an admin token, unless insecure_dev
    service = AdminService(settings, runner=runner, rollout=rollout, evaluate=evaluate, export=export,
                           probabilities=probabilities)  # fmt: skip
    service.open()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start_background()
        yield
        service.close()

    docs = settings.api_docs  # off outside development: the API's shape is nobody else's business
    app = FastAPI(
        title="graft admin",
        version=__version__,
        description="Collect labelled samples, retrain, gate and promote models served by TorchServe.",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.service = service
    app.state.settings = settings
    app.state.auth = TokenAuth(
        settings.resolved_admin_token(), settings.resolved_samples_token(), insecure=settings.insecure_dev
    )
    app.state.sessions = SessionStore(settings.console_session_minutes * 60)
    app.state.sign_in_throttle = SignInThrottle()
    app.add_middleware(Guard, auth=lambda: app.state.auth, settings=settings, sessions=lambda: app.state.sessions,
                       throttle=lambda: app.state.sign_in_throttle)  # fmt: skip
    app.add_exception_handler(GraftError, _graft_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    for module in (samples, labels, jobs, models, review, erasures, drift, audit):
        app.include_router(module.router)
    _add_probes(app, service)
    return app


def _add_probes(app: FastAPI, service: AdminService) -> None:
    @app.get("/healthz", tags=["probes"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["probes"])
    def readyz() -> Any:
        """Readiness: SQLite answers, the admin knows the model in service, and TorchServe's default is the
        registry's. ``detail`` says why not; ``warnings`` what works in a reduced way (no base data...)."""
        checks = {
            "database": service.db.ping(),
            "champion": service.registry.default_version() is not None,
            "reconciled": service.reconciled.is_set(),
        }
        ok = all(checks.values())
        body: dict[str, Any] = {
            "status": "ready" if ok else "not ready",
            "checks": checks,
            "model_name": service.model_name,
            "default_version": service.registry.default_version(),
            "job": service.jobs.active(),
            "warnings": service.warnings,
        }
        if problems := service.ready_problems():
            body["detail"] = "; ".join(problems)
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["probes"], response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        """Prometheus text format."""
        return PlainTextResponse(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
