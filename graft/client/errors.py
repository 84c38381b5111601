"""The admin's error answers as typed exceptions, carrying the server's fields.

The admin answers every error as ``{"error": {"type", "status", "message"}}`` (admin/api/app.py); each
status a caller can act on has its own class, so ``except ConflictError`` reads as what it means.
"""

from __future__ import annotations

from typing import Any

import httpx

from graft.core.errors import GraftError


class ApiError(GraftError):
    """An error answer of the admin API: ``status``, ``type`` and ``message`` are the server's."""

    status_code = 500

    def __init__(self, message: str, *, status: int, type: str = "", body: Any = None, hint: str = ""):
        super().__init__(f"{message} ({hint})" if hint else message)
        self.status = status
        self.status_code = status
        self.type = type
        self.message = message
        self.body = body


class BadRequestError(ApiError):
    """400: the request was malformed."""


class UnauthorizedError(ApiError):
    """401: no token, or a wrong one."""


class ForbiddenError(ApiError):
    """403: a valid token that may not do this (the samples token on an admin route)."""


class NotFoundError(ApiError):
    """404: no such job, model version, sample or capture."""


class ConflictError(ApiError):
    """409: the service's state forbids it now (a job already running, a version that cannot be promoted...)."""


class PayloadTooLargeError(ApiError):
    """413: a body over the admin's limit."""


class UnsupportedMediaTypeError(ApiError):
    """415: a body of the wrong kind (an image that is not one, JSON sent as a form)."""


class UnprocessableError(ApiError):
    """422: a request that does not validate (an unknown training setting, a bad label)."""


class RateLimitedError(ApiError):
    """429: too many tries; ``retry_after`` says how many seconds to wait, when the server said."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerError(ApiError):
    """5xx: the service failed; its log has the details."""


class ServiceUnreachableError(GraftError):
    """Nothing answers at the admin's URL."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequestError, 401: UnauthorizedError, 403: ForbiddenError, 404: NotFoundError, 409: ConflictError,
    413: PayloadTooLargeError, 415: UnsupportedMediaTypeError, 422: UnprocessableError, 429: RateLimitedError,
}  # fmt: skip
_HINTS = {
    401: "give the admin token: GRAFT_TOKEN, --token-file, or the state folder's admin.token (--state-dir)",
    403: "this needs the admin token, not the samples token",
}


def error_from(r: httpx.Response) -> ApiError:
    """The typed exception for an error answer (status >= 400)."""
    try:
        body: Any = r.json()
    except ValueError:
        body = None
    fields = body.get("error") if isinstance(body, dict) else None
    if not isinstance(fields, dict) and isinstance(body, dict) and "message" in body:
        fields = body  # TorchServe's own shape: {"code", "type", "message"}
    if isinstance(fields, dict):
        message, type_ = str(fields.get("message", "")), str(fields.get("type", ""))
    else:
        message, type_ = (r.text[:300].strip() or r.reason_phrase), ""
    cls = _BY_STATUS.get(r.status_code, ServerError if r.status_code >= 500 else ApiError)
    kw: dict[str, Any] = {"status": r.status_code, "type": type_, "body": body, "hint": _HINTS.get(r.status_code, "")}
    if cls is RateLimitedError:
        kw["retry_after"] = _seconds(r.headers.get("Retry-After"))
    return cls(message, **kw)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def check(r: httpx.Response) -> httpx.Response:
    """``r`` when it succeeded, else its typed exception."""
    if r.status_code >= 400:
        raise error_from(r)
    return r
