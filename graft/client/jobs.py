"""A retraining job as the client sees it: refresh it, follow it, wait for the gate's verdict."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from graft.core.errors import GraftError

if TYPE_CHECKING:
    from graft.client.api import Client

RUNNING = ("queued", "running")


class JobTimeoutError(GraftError):
    """``Job.wait`` gave up; the job itself goes on."""


class Job:
    """``client.retrain()``'s handle. ``data`` is the job's JSON as last seen (``GET /v1/jobs/ID``)."""

    def __init__(self, client: Client, job_id: str, data: dict[str, Any] | None = None):
        self.client = client
        self.id = job_id
        self.data: dict[str, Any] = data or {"id": job_id, "status": "queued"}

    def __repr__(self) -> str:
        return f"Job({self.id!r}, status={self.status!r}, phase={self.phase!r}, progress={self.progress:.2f})"

    @property
    def status(self) -> str:
        """queued | running | succeeded | held | rejected | failed"""
        return str(self.data.get("status", ""))

    @property
    def phase(self) -> str:
        return str(self.data.get("phase", ""))

    @property
    def progress(self) -> float:
        return float(self.data.get("progress") or 0.0)

    @property
    def done(self) -> bool:
        return self.status not in RUNNING

    @property
    def promoted(self) -> bool:
        return bool(self.data.get("promoted"))

    @property
    def reason(self) -> str:
        """The gate's verdict in words (or why the job failed)."""
        return str(self.data.get("reason", ""))

    @property
    def suspects(self) -> list[dict[str, Any]]:
        """Samples to review: those of a label the data check flagged that the model in service disagrees with, and
        those an earlier job listed that nobody reviewed (``id``, ``label`` uploaded with, ``predicted``,
        ``split``); empty when there are none."""
        check = self.data.get("data_check") or {}
        return list(check.get("suspects") or []) + list(check.get("unreviewed") or [])

    @property
    def candidate_version(self) -> str | None:
        v = self.data.get("candidate_version")
        return None if v is None else str(v)

    def refresh(self) -> Job:
        self.data = self.client.job(self.id)
        return self

    def cancel(self) -> Job:
        self.data = self.client.cancel(self.id)
        return self

    def wait(
        self, timeout: float | None = None, poll_s: float = 1.0, on_progress: Callable[[Job], None] | None = None
    ) -> Job:
        """Until the job finishes; ``on_progress(job)`` each time its status, phase or progress changes.
        :class:`JobTimeoutError` after ``timeout`` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: tuple[str, str, float] | None = None
        while True:
            self.refresh()
            seen = (self.status, self.phase, round(self.progress, 3))
            if on_progress is not None and seen != last:
                on_progress(self)
            last = seen
            if self.done:
                return self
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeoutError(f"job {self.id} is still {self.status} ({self.phase}) after {timeout:.0f}s; "
                                 f"it goes on: follow it with `graft status` or Job.wait() again")  # fmt: skip
            time.sleep(poll_s)
