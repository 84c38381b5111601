"""``/v1/drift``: the champion's recent captured traffic against its holdout (admin token)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from admin.api.auth import require_admin
from admin.api.deps import ERRORS, service

router = APIRouter(prefix="/v1", tags=["drift"], responses=ERRORS, dependencies=[Depends(require_admin)])


@router.get("/drift")
async def drift(
    request: Request,
    windows: Annotated[int, Query(ge=1, le=168, description="how many windows, newest first")] = 6,
    window_s: Annotated[float | None, Query(gt=0, le=30 * 86400, description="window length in seconds")] = None,
) -> dict[str, Any]:
    """Per window: captures, PSI of the predicted classes against the holdout (and its reading: stable,
    moderate, shifted, too_few), mean top-1 confidence, share of low-margin answers, the labels that moved.
    The first call for a new champion computes its holdout profile (seconds on a CPU)."""
    return await run_in_threadpool(service(request).feedback.drift_report, windows, window_s)
