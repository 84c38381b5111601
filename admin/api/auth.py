"""Bearer tokens: an admin token for everything, a samples token for ``POST /v1/samples`` only.

Tokens are compared with :func:`hmac.compare_digest` (constant time), and both are always compared
so the time taken does not reveal which one a guess came close to.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from graft.core.errors import AuthenticationError, PermissionDeniedError

Role = Literal["admin", "samples", "insecure"]

bearer = HTTPBearer(auto_error=False, description="GRAFT_ADMIN_TOKEN, or GRAFT_SAMPLES_TOKEN for posting samples")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


class TokenAuth:
    def __init__(self, admin_token: str | None, samples_token: str | None, insecure: bool = False):
        self._admin = admin_token.encode() if admin_token else None
        self._samples = samples_token.encode() if samples_token else None
        self.insecure = insecure

    def check(self, token: str | None, samples_ok: bool) -> Role:
        if self.insecure:
            return "insecure"
        if not token:
            raise AuthenticationError("missing bearer token: send 'Authorization: Bearer <token>'")
        given = token.encode()
        # Compare against a same-length dummy when a token is unset, so every path does the same work.
        is_admin = hmac.compare_digest(given, self._admin or b"\0" * 32) and self._admin is not None
        is_samples = hmac.compare_digest(given, self._samples or b"\0" * 32) and self._samples is not None
        if is_admin:
            return "admin"
        if is_samples:
            if samples_ok:
                return "samples"
            raise PermissionDeniedError("the samples token may only post samples; this endpoint needs the admin token")
        raise AuthenticationError("invalid bearer token")


def bearer_token(header: str | None, strict: bool = True) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None without one. Another scheme or a bare
    token is refused (when ``strict``) with a message that says what is wrong with it."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if strict:
        raise AuthenticationError("malformed Authorization header: use 'Authorization: Bearer <token>'")
    return None


def _auth(request: Request) -> TokenAuth:
    auth: TokenAuth = request.app.state.auth
    return auth


def _token(request: Request, cred: HTTPAuthorizationCredentials | None) -> str | None:
    if cred is not None:
        return cred.credentials
    if request.headers.get("authorization") and not _auth(request).insecure:
        # HTTPBearer gives nothing for "Basic ..." or a bare token: say what is wrong with it.
        raise AuthenticationError("malformed Authorization header: use 'Authorization: Bearer <token>'")
    return None


def require_admin(request: Request, cred: Bearer) -> Role:
    return _auth(request).check(_token(request, cred), samples_ok=False)


def require_sampler(request: Request, cred: Bearer) -> Role:
    return _auth(request).check(_token(request, cred), samples_ok=True)
