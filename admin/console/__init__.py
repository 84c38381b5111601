"""The web console at ``/console``: server-rendered pages over the same service object as the JSON API."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles


def install(app: FastAPI) -> None:
    """The console's routes and static files, on the app the JSON API built."""
    from admin.console import actions, api, corrections, pages
    from admin.console.render import STATIC

    for module in (api, actions, corrections, pages):
        app.include_router(module.router)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
