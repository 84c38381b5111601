"""Rendering console pages: Jinja2 with autoescaping, the session and CSRF token in every page, strict headers."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape

from admin.api.app import error_response
from admin.api.sessions import Session
from graft.core.errors import GraftError, PermissionDeniedError, UserInputError

HERE = Path(__file__).parent
STATIC = HERE / "static"

# No inline script or style anywhere: the policy forbids them, so injected markup cannot run.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

# (path, title, admin only)
NAV = [("/console", "Overview", True), ("/console/models", "Models", True), ("/console/jobs", "Jobs", True),
       ("/console/samples", "Samples", False), ("/console/review", "Review", False),
       ("/console/history", "History", True)]  # fmt: skip


@functools.cache
def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * float(v):.1f}%"
    env.filters["num"] = lambda v, d=4: "–" if v is None else f"{float(v):.{d}f}"
    env.filters["when"] = _when
    return env


def _when(value: str | None) -> str:
    """An ISO timestamp as people read it: 2026-12-01 11:44 UTC."""
    if not value:
        return "–"
    try:
        t = dt.datetime.fromisoformat(value).astimezone(dt.UTC)
    except ValueError:
        return value
    return t.strftime("%Y-%m-%d %H:%M UTC")


def session_of(request: Request) -> Session:
    session: Session = request.scope["state"]["console_session"]  # the guard put it there
    return session


def require_admin_page(request: Request) -> Session:
    session = session_of(request)
    if not session.is_admin:
        raise PermissionDeniedError("this page needs the admin token; the samples token may label and upload")
    return session


def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    session: Session | None = request.scope.get("state", {}).get("console_session")
    nav = [(path, title) for path, title, admin in NAV if session is not None and (session.is_admin or not admin)]
    html = environment().get_template(template).render(
        session=session, csrf=session.csrf if session else "", nav=nav, path=request.url.path, **context
    )
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def error_page(request: Request, error: GraftError) -> Response:
    """The error as a page, or as the API's JSON error for the page's own scripts (``Accept: application/json``),
    which show its message: the reason, not only a status."""
    status = int(getattr(error, "status_code", 500))
    if "application/json" in request.headers.get("accept", ""):
        message = str(error) if status < 500 else "internal error; the service log has the details"
        return error_response(status, type(error).__name__, message, dict(SECURITY_HEADERS))
    return page(request, "error.html", status=status, status_code=status, kind=type(error).__name__,
                message=str(error) if status < 500 else "internal error; the service log has the details")  # fmt: skip


class ConsoleRoute(APIRoute):
    """Pages answer errors with a page (the JSON API keeps its JSON errors)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except GraftError as e:
                return error_page(request, e)
            except RequestValidationError as e:
                return error_page(request, UserInputError(f"invalid form: {e.errors()[0].get('msg', e)}"))

        return route
