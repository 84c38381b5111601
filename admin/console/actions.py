"""The console's forms (POST): sign in and out, promote, roll back, retrain, cancel, upload (the corrections'
forms are in admin/console/corrections.py).

Every form but the sign-in carries the session's CSRF token (a hidden field, or the ``X-CSRF-Token``
header from the page's script); without it the form is refused with a 403 and nothing changes. The
session cookie is HttpOnly and SameSite=Strict as well, and Secure over TLS.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from admin.api.auth import TokenAuth
from admin.api.deps import service
from admin.api.sessions import COOKIE, Session, SessionStore, SignInThrottle
from admin.api.uploads import read_form_fields
from admin.console.render import ConsoleRoute, page, require_admin_page, session_of
from admin.domain.recipe import RetrainRequest
from graft.core.errors import ConfigInvalidError, GraftError, InvalidSampleError, PermissionDeniedError

log = logging.getLogger(__name__)
router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)
CSRF_HEADER = "x-csrf-token"


def check_csrf(session: Session, given: object) -> None:
    if not session.csrf_ok(given if isinstance(given, str) else None):
        raise PermissionDeniedError("this form has no valid CSRF token: reload the page and submit it again")


async def _form(request: Request) -> dict[str, Any]:
    async with request.form(max_files=0, max_fields=20) as form:
        return {k: v for k, v in form.items() if isinstance(v, str)}


async def checked_form(request: Request, admin: bool = True) -> tuple[Session, dict[str, Any]]:
    session = require_admin_page(request) if admin else session_of(request)
    form = await _form(request)
    check_csrf(session, form.get("csrf") or request.headers.get(CSRF_HEADER))
    return session, form


def _secure(request: Request) -> bool:
    mode = service(request).settings.console_secure_cookie
    if mode != "auto":
        return mode == "always"
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    target = str(form.get("next") or "/console")
    target = target if target.startswith("/console") and "//" not in target else "/console"
    auth: TokenAuth = request.app.state.auth
    throttle: SignInThrottle = request.app.state.sign_in_throttle
    client = request.client.host if request.client else "?"
    if (wait := math.ceil(throttle.wait_s(client))) > 0:  # not judged at all: a guesser learns nothing meanwhile
        refused = page(request, "login.html", status=429, next=target,
                       error=f"Too many wrong tokens from this address: try again in {wait} s.")  # fmt: skip
        refused.headers["Retry-After"] = str(wait)
        return refused
    try:
        role = auth.check(str(form.get("token", "")).strip() or None, samples_ok=True)
    except GraftError:
        throttle.failed(client)
        log.warning("console: sign-in refused from %s", client)
        return page(request, "login.html", status=401, next=target, error="That token is not valid here.")
    throttle.succeeded(client)
    sessions: SessionStore = request.app.state.sessions
    session = sessions.create(role, client)
    response = RedirectResponse(target if session.is_admin else "/console/review", status_code=303)
    response.set_cookie(COOKIE, session.id, max_age=int(sessions.ttl_s), httponly=True, samesite="strict",
                        secure=_secure(request), path="/console")  # fmt: skip
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    session, _ = await checked_form(request, admin=False)
    request.app.state.sessions.delete(session.id)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path="/console")
    return response


@router.post("/models/{version}/promote")
async def promote(request: Request, version: str) -> Response:
    _, form = await checked_form(request)
    await run_in_threadpool(service(request).promote, version, form.get("force") == "true")
    return RedirectResponse(f"/console/models?changed={version}", status_code=303)


@router.post("/rollback")
async def rollback(request: Request) -> Response:
    await checked_form(request)
    model = await run_in_threadpool(service(request).rollback)
    return RedirectResponse(f"/console/models?changed={model.version}", status_code=303)


@router.post("/retrain")
async def retrain(request: Request) -> Response:
    _, form = await checked_form(request)
    body = retrain_request(form)
    job = await run_in_threadpool(service(request).jobs.start, body, "console")
    return RedirectResponse(f"/console/jobs/{job.id}", status_code=303)


def retrain_request(form: dict[str, Any]) -> RetrainRequest:
    """The form's fields through the API's own model (``POST /v1/retrain``): the same limits and the same 422,
    whatever is typed (a superscript digit, 5000, a number of 5,000 digits)."""
    fields = {k: v.strip() for k, v in form.items() if k in RetrainRequest.model_fields and v.strip()}
    try:
        return RetrainRequest.model_validate(fields)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigInvalidError(f"invalid retrain form: {problems}") from None


@router.post("/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: str) -> Response:
    await checked_form(request)
    service(request).jobs.cancel(job_id)
    return RedirectResponse(f"/console/jobs/{job_id}", status_code=303)


@router.post("/samples")
async def upload(request: Request) -> Response:
    """Images with one label (the form, or the page's drag and drop with ``Accept: application/json``)."""
    session = session_of(request)
    svc = service(request)
    st = svc.settings
    uploads, labels, fields = await read_form_fields(request, st.max_upload_bytes, st.max_batch_files,
                                                     ("csrf", "new_label"))  # fmt: skip
    check_csrf(session, fields.get("csrf") or request.headers.get(CSRF_HEADER))
    if not labels or not labels[0].strip():
        raise InvalidSampleError("choose a label for these images")
    stored = await run_in_threadpool(lambda: svc.add_samples(uploads, labels[:1], session.role,
                                                             new_label=fields.get("new_label") == "true"))
    dups = sum(s.duplicate for s in stored)
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse({"stored": len(stored) - dups, "duplicates": dups, "label": stored[0].label})
    return RedirectResponse(f"/console/samples?stored={len(stored) - dups}&duplicates={dups}", status_code=303)
