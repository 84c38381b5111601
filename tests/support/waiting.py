"""Waiting on conditions instead of sleeping: each wait names what it waited for when it times out."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float = 30, interval: float = 0.05, what: str = "condition") -> T:
    """Call ``check`` until it returns something truthy; return that. AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what} (last: {value!r})"
        time.sleep(interval)


def wait_ready(c: httpx.Client, timeout: float = 30) -> None:
    """Until the admin's ``/readyz`` answers 200."""
    wait_for(lambda: c.get("/readyz").status_code == 200, timeout, what="/readyz 200")


def wait_job(c: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    """Until the job has finished; its final JSON."""

    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = c.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] not in ("queued", "running") else None

    return wait_for(finished, timeout, interval=0.1, what=f"job {job_id} to finish")


def error_of(r: httpx.Response) -> dict[str, Any]:
    """The admin's error body, checked for its shape."""
    body = r.json()
    assert set(body) == {"error"}, body
    assert body["error"]["status"] == r.status_code and body["error"]["message"]
    return dict(body["error"])
