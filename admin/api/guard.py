"""The admin's front door, in front of every route: authenticate before reading a body, cap every body,
give a body a deadline.

FastAPI would parse a JSON body (and answer 422) before a route's auth dependency runs, and would read a
body of any size at any pace. This ASGI middleware decides from the request line and headers alone:

* who may call: public probes, the samples, review and sample-correction routes (admin or samples token),
  everything else under ``/v1`` and the API docs (admin token), the console's pages (a session cookie; without
  one a page redirects to the sign-in form and anything else is a 401); a missing or wrong token is a 401 and a
  samples token on an admin route a 403, before a single body byte is read;
* how often an address may guess: a wrong bearer token counts against the client's address, and past a few that
  address waits, doubling, before its next token is judged (a 429 with ``Retry-After`` meanwhile; the table is
  the console sign-in's, admin/api/sessions.py ``SignInThrottle``);
* how big a body may be: per route (a ``Content-Length`` over the limit is a 413 at once; a chunked body
  is counted as it streams and refused the moment it passes the limit);
* how long a body may take: ``GRAFT_BODY_TIMEOUT_S`` for the whole body, and at most
  :data:`SMALL_BODY_TIMEOUT_S` for one that declares at most :data:`SMALL_BODY` bytes or is sent to a route
  that takes no more (a sign-in form, a JSON document): a body trickled a byte at a time is a 408 within
  seconds, not a request slot held for minutes (admin/connections.py also bounds how many bodies one client
  may have arriving at once);
* without authentication (insecure_dev), whether the request is this machine's own (admin/api/origin.py: the
  ``Host``, ``Origin`` and ``Sec-Fetch-Site`` headers), so that a web page cannot drive the admin.

The route dependencies (admin/api/auth.py) check the token again: defence in depth, and the OpenAPI docs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from admin.api.auth import Role, TokenAuth, bearer_token
from admin.api.origin import check_local_request
from admin.api.sessions import SessionStore, SignInThrottle, cookie_value
from admin.settings import AdminSettings
from graft.core.errors import (
    AuthenticationError,
    GraftError,
    PayloadTooLargeError,
    RequestTimeoutError,
    TooManyAttemptsError,
)

log = logging.getLogger(__name__)

SMALL_BODY = 64 * 1024  # JSON bodies of the admin routes
SMALL_BODY_TIMEOUT_S = 5.0  # a declared body of at most SMALL_BODY bytes: 64 KiB in 5 s is 13 KB/s, a slow phone
MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and the label field
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics")


@dataclass(frozen=True)
class Policy:
    who: Literal["public", "samples", "admin", "session"]  # session: the console's cookie
    max_body: int


def _console_policy(method: str, path: str, st: AdminSettings) -> Policy:
    if path.startswith("/console/static/") or path == "/console/login":
        return Policy("public", SMALL_BODY if method == "POST" else 0)
    if method == "POST" and path == "/console/samples":
        return Policy("session", st.max_batch_bytes)
    return Policy("session", SMALL_BODY)


def policy_for(method: str, path: str, st: AdminSettings) -> Policy:
    if path == "/console" or path.startswith("/console/"):
        return _console_policy(method, path, st)
    if path in PUBLIC_PATHS:
        return Policy("public", 0)
    if path in DOCS_PATHS:
        return Policy("admin", 0)
    if method == "POST" and path == "/v1/samples":
        return Policy("samples", st.max_upload_bytes + MULTIPART_OVERHEAD)
    if method == "POST" and path == "/v1/samples/batch":
        return Policy("samples", st.max_batch_bytes)
    if _is_review(method, path) or _is_own_samples(method, path) or (method == "GET" and path == "/v1/labels"):
        # Whoever may post samples may label captures, with known labels, and correct what it uploaded (the
        # routes check whose the sample is).
        return Policy("samples", SMALL_BODY)
    if path.startswith("/v1/") or path == "/v1":
        return Policy("admin", SMALL_BODY)
    return Policy("public", 0)  # unknown paths: the router answers 404, no body needed


def _is_review(method: str, path: str) -> bool:
    if not (path == "/v1/review" or path.startswith("/v1/review/")):
        return False
    return method == "GET" or (method == "POST" and path.endswith(("/label", "/undo")))  # DELETE: admin


def _is_own_samples(method: str, path: str) -> bool:
    """Listing samples, and relabelling or deleting one (``/v1/samples/{id}``)."""
    if method == "GET":
        return path == "/v1/samples"
    return method in ("PATCH", "DELETE") and path.startswith("/v1/samples/") and path.count("/") == 3


def _error(exc: GraftError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    status = int(exc.status_code)
    body = json.dumps({"error": {"type": type(exc).__name__, "status": status, "message": str(exc)}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if isinstance(exc, TooManyAttemptsError):
        headers.append((b"retry-after", str(exc.retry_after_s).encode()))
    if status in (408, 413):
        headers.append((b"connection", b"close"))  # the rest of the body is never read
    return status, headers, body


async def _redirect(send: Send, location: str) -> None:
    headers = [(b"location", location.encode("latin-1")), (b"content-length", b"0"),
               (b"cache-control", b"no-store")]  # fmt: skip
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _send_error(send: Send, exc: GraftError) -> None:
    status, headers, body = _error(exc)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app: ASGIApp, auth: Callable[[], TokenAuth], settings: AdminSettings,
                 sessions: Callable[[], SessionStore] | None = None,
                 throttle: Callable[[], SignInThrottle] | None = None):  # fmt: skip
        self.app = app
        self.auth = auth
        self.settings = settings
        self.sessions = sessions
        self.throttle = throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = policy_for(scope["method"], scope["path"], self.settings)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        started = False
        refused: list[GraftError] = []  # a body over its limit or past its deadline, seen by ``bounded``

        async def guarded_send(message: Message) -> None:
            # Frameworks turn an error raised while reading a body into their own 400: answer ours instead.
            nonlocal started
            if refused:
                if not started:
                    started = True
                    await _send_error(send, refused[0])
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            if self.auth().insecure:  # no authentication: only this machine's programs and the admin's own pages
                check_local_request(scope["method"], headers, scope.get("scheme", "http"))
            if policy.who == "session":
                session = self.sessions().get(cookie_value(headers.get("cookie"))) if self.sessions else None
                if session is None:
                    page = not scope["path"].startswith("/console/api/")
                    if page and scope["method"] in ("GET", "HEAD"):  # to the sign-in form, and back after
                        await _redirect(send, "/console/login?next=" + quote(scope["path"], safe="/"))
                        return
                    raise AuthenticationError("sign in to the console first (the session expired or is missing)")
                scope.setdefault("state", {})["console_session"] = session
            elif policy.who != "public":
                role = self._check_token(scope, headers, samples_ok=policy.who == "samples")
                scope.setdefault("state", {})["role"] = role
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > policy.max_body:
                raise PayloadTooLargeError(f"request body is {declared} bytes; the limit here is {policy.max_body}")
            timeout = self.settings.body_timeout_s
            if policy.max_body <= SMALL_BODY or (declared.isdigit() and int(declared) <= SMALL_BODY):
                timeout = min(timeout, SMALL_BODY_TIMEOUT_S)  # chunked too, where no more may come
            await self.app(scope, self._bounded(receive, policy.max_body, timeout, refused), guarded_send)
        except ClientDisconnect:  # gone mid-body (or cut off by admin/connections.py): nobody to answer, no error
            log.debug("%s %s: the client went away before its body was read", scope["method"], scope["path"])
        except GraftError as exc:
            if started:
                raise
            await _send_error(send, exc)

    def _check_token(self, scope: Scope, headers: dict[str, str], samples_ok: bool) -> Role:
        """The bearer token's role; a wrong token counts against the client's address, and an address that has sent
        too many waits (a 429, the token not judged) before the next is."""
        auth = self.auth()
        token = bearer_token(headers.get("authorization"), strict=not auth.insecure)
        if auth.insecure or token is None or self.throttle is None:
            return auth.check(token, samples_ok=samples_ok)  # no token is no guess: a plain 401
        throttle = self.throttle()
        client = scope["client"][0] if scope.get("client") else "?"
        if (wait := math.ceil(throttle.wait_s(client))) > 0:
            raise TooManyAttemptsError(f"too many wrong tokens from this address: try again in {wait} s", wait)
        try:
            return auth.check(token, samples_ok=samples_ok)
        except AuthenticationError:
            # Only failures count, and a success clears nothing: a program with the right token at the same address
            # must not reset a guesser's wait with every call.
            throttle.failed(client)
            log.warning("admin API: wrong bearer token from %s (%s %s)", client, scope["method"], scope["path"])
            raise

    def _bounded(self, receive: Receive, limit: int, timeout: float, refused: list[GraftError]) -> Receive:
        """``receive`` with the body counted against ``limit`` and due within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen, done = 0, False

        async def bounded() -> Message:
            nonlocal seen, done
            if done:  # after the body only a disconnect can come, whenever it comes
                return await receive()
            try:
                message: Message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError as e:
                refused.append(RequestTimeoutError(f"the request body did not arrive within {timeout:.0f}s"))
                raise refused[-1] from e
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    refused.append(PayloadTooLargeError(f"request body passed the limit of {limit} bytes; "
                                                        "refused while uploading"))  # fmt: skip
                    raise refused[-1]
                done = not message.get("more_body", False)
            return message

        return bounded
