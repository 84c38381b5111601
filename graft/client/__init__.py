"""A Python client for graft's admin API, and the ``graft upload/retrain/status/...`` commands on it.

It talks HTTP only (an import-linter contract keeps admin, training and handlers out of it).
"""

from graft.client.api import Client, Predictor
from graft.client.errors import (
    ApiError,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    ServerError,
    ServiceUnreachableError,
    UnauthorizedError,
    UnprocessableError,
    UnsupportedMediaTypeError,
)  # fmt: skip
from graft.client.folders import UploadReport
from graft.client.jobs import Job, JobTimeoutError

__all__ = [
    "ApiError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "ForbiddenError",
    "Job",
    "JobTimeoutError",
    "NotFoundError",
    "PayloadTooLargeError",
    "Predictor",
    "RateLimitedError",
    "ServerError",
    "ServiceUnreachableError",
    "UnauthorizedError",
    "UnprocessableError",
    "UnsupportedMediaTypeError",
    "UploadReport",
]  # fmt: skip
