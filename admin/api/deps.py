"""What every route needs from the app: the service, and the shared error documentation."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from admin.api.schemas import ErrorOut
from admin.domain.service import AdminService

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 415, 422, 502)
}


def service(request: Request) -> AdminService:
    svc: AdminService = request.app.state.service
    return svc
