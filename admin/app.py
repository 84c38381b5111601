"""``create_app(settings)``: the admin service's application, the JSON API (``/v1``) and the console
(``/console``) on one port. Nothing is built at import time."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from admin.api.app import build_api
from admin.console import install


def create_app(*args: Any, **kwargs: Any) -> FastAPI:
    """:func:`admin.api.app.build_api`'s arguments; the console is added to what it builds."""
    app = build_api(*args, **kwargs)
    install(app)
    return app
