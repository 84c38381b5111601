"""Token authorization and a request-size cap, checked before any body is read.

Keys live in a JSON file shaped like TorchServe's ``key_file.json`` (``{"inference": {"key": ...},
"management": {"key": ...}}``), so clients and the admin read either runtime's file the same way.
Inference calls (v1, v2 REST, gRPC) need ``Authorization: Bearer <inference key>``; graft's version
management routes (``/graft/...``) need the management key. Liveness, readiness and ``/metrics`` stay
open for kubelet probes and Prometheus, as TorchServe's ping and metrics ports are.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.core.errors import ConfigError
from graft.kserve.errors import error_body

OPEN_PATHS = frozenset({"/", "/metrics", "/v2", "/v2/health/live", "/v2/health/ready"})
# graft's version routes, and KServe's own repository load/unload (an inference key must not unload a model).
MANAGEMENT_PREFIXES = ("/graft/", "/v2/repository/")
# gRPC methods a probe may call without a key (grpc_health_probe-style liveness and readiness).
OPEN_GRPC_METHODS = frozenset(
    {"/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady"}
)


@dataclass(frozen=True)
class Keys:
    inference: str
    management: str


def load_or_create_keys(path: Path) -> Keys:
    """The keys in ``path``; a new random pair written there (mode 0600) when the file does not exist."""
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
            return Keys(str(doc["inference"]["key"]), str(doc["management"]["key"]))
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path} is not a key file ({e}): delete it to have new keys made") from e
    keys = Keys(secrets.token_urlsafe(24), secrets.token_urlsafe(24))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"inference": {"key": keys.inference}, "management": {"key": keys.management}}, f)
    return keys


def bearer_matches(header: str | bytes | None, key: str) -> bool:
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    if not header or not header.lower().startswith("bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), key.encode())


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _TooLargeError(Exception):
    pass


async def _reply(send: Send, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None) -> None:
    # "error": the OIP / KServe error field clients read, beside graft's own keys.
    raw = json.dumps({**body, "error": body.get("message", "")}, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


class GuardMiddleware:
    """Pure ASGI: refuses a request without the right key (401) or with a body over ``max_bytes`` (413)
    before the application reads it."""

    def __init__(self, app: Any, keys: Keys | None, max_bytes: int) -> None:
        self.app = app
        self.keys = keys
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.keys is not None and path not in OPEN_PATHS:
            which = "management" if path.startswith(MANAGEMENT_PREFIXES) else "inference"
            key = self.keys.management if which == "management" else self.keys.inference
            if not bearer_matches(headers.get(b"authorization"), key):
                await _reply(send, 401, error_body(401, "AuthenticationError", "unauthorized",
                                                   f"send 'Authorization: Bearer <{which} key>' (the key file's "
                                                   f"{which}.key)"), [(b"www-authenticate", b"Bearer")])  # fmt: skip
                return
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _reply(send, 413, _too_large(self.max_bytes))
            return
        seen = 0
        started = False

        async def capped_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped_receive, tracking_send)
        except _TooLargeError:
            if not started:
                await _reply(send, 413, _too_large(self.max_bytes))


def _too_large(max_bytes: int) -> dict[str, Any]:
    return error_body(413, "BodyTooLargeError", "body_too_large",
                      f"request body over {max_bytes} bytes, the server's limit: send fewer or smaller images")


def grpc_auth_interceptor(keys: Keys) -> Any:
    """A ``grpc.aio`` server interceptor: every method but liveness/readiness needs the inference key."""
    import grpc
    from grpc import aio

    async def _deny(request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "send metadata 'authorization: Bearer <inference key>' (the key file's inference.key)")

    class AuthInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            if details.method in OPEN_GRPC_METHODS:
                return await continuation(details)
            token = next((v for k, v in (details.invocation_metadata or ()) if k == "authorization"), None)
            if bearer_matches(token, keys.inference):
                return await continuation(details)
            return grpc.unary_unary_rpc_method_handler(_deny)

    return AuthInterceptor()
