"""The runtime's answer when a request fails: the handler's status and JSON body, kept for every transport."""

from __future__ import annotations

from typing import Any

# gRPC status names for the HTTP statuses graft answers with (a subset of the usual HTTP <-> gRPC mapping).
GRPC_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
              409: "FAILED_PRECONDITION", 413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT",
              422: "INVALID_ARGUMENT", 503: "UNAVAILABLE"}  # fmt: skip


class ServedError(Exception):
    """A refused or failed request: ``status`` (HTTP) and graft's error body (code, type, reason, message)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(str(body.get("message", "")))
        self.status = int(status)
        self.body = body

    @property
    def grpc_code(self) -> str:
        return GRPC_CODES.get(self.status, "INTERNAL" if self.status >= 500 else "INVALID_ARGUMENT")


def error_body(status: int, type_: str, reason: str, message: str) -> dict[str, Any]:
    return {"code": status, "type": type_, "reason": reason, "message": message}
