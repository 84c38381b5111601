"""Typed domain errors. Each message says what to do next; HTTP layers map them in one place."""

from __future__ import annotations


class GraftError(Exception):
    """Base of every error graft raises on purpose."""

    #: HTTP status an API layer should answer with when this error reaches it.
    status_code: int = 500


class UserInputError(GraftError):
    """The caller asked for something invalid; fixing the request fixes it."""

    status_code = 400


class BackboneError(UserInputError):
    """Unknown backbone, or one whose optional package is missing."""


class WeightsError(UserInputError):
    """Pretrained or trained weights that cannot be found, read, or do not fit the architecture."""


class DatasetError(UserInputError):
    """A dataset folder that cannot be used for training (missing, empty, a single class...)."""


class FreezeSpecError(UserInputError):
    """A freezing request that names no stage of the model."""


class ConfigInvalidError(UserInputError):
    """A training configuration that does not validate (unknown field, wrong type, conflicting choices)."""

    status_code = 422


class ArtifactError(GraftError):
    """A run folder or model archive that is incomplete or inconsistent."""

    status_code = 422


class ExportError(GraftError):
    """Export produced something that does not match the PyTorch model."""


class QuantizationError(ExportError):
    """The INT8 model lost more validation accuracy than the export allows (or could not be built)."""


# --------------------------------------------------------------------------- serving
# One subclass per way a prediction request can be bad. ``reason`` is a stable machine token:
# the JSON error body carries it and the RejectedInputs metric counts by it.


class BadInputError(UserInputError):
    """A prediction request item the handler refuses; the other items of its batch are unaffected."""

    reason: str = "bad_request"


class BadBase64Error(BadInputError):
    reason = "bad_base64"


class EmptyBodyError(BadInputError):
    reason = "empty_body"


class NotAnImageError(BadInputError):
    status_code = 415
    reason = "not_an_image"


class UnsupportedFormatError(BadInputError):
    status_code = 415
    reason = "unsupported_format"


class FormContentTypeError(BadInputError):
    """The body arrived decoded as HTML form fields: the client sent a form content type."""

    status_code = 415
    reason = "form_content_type"


class TruncatedImageError(BadInputError):
    reason = "truncated_image"


class TooManyPixelsError(BadInputError):
    status_code = 413
    reason = "too_many_pixels"


class BodyTooLargeError(BadInputError):
    status_code = 413
    reason = "body_too_large"


class ServeError(GraftError):
    """TorchServe could not be configured, started, reached or stopped."""


# --------------------------------------------------------------------------- admin (control plane)


class AuthenticationError(GraftError):
    """No bearer token, or one that matches no configured token."""

    status_code = 401


class PermissionDeniedError(GraftError):
    """A valid token that may not call this endpoint (the samples-only token on an admin route)."""

    status_code = 403


class TooManyAttemptsError(GraftError):
    """Too many wrong tokens from one address: it must wait ``retry_after_s`` before the next is judged."""

    status_code = 429

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DisallowedHostError(UserInputError):
    """A request addressed to a name this service does not answer (a DNS-rebinding page's, in insecure mode)."""


class NotFoundError(GraftError):
    """An unknown job, model version or sample."""

    status_code = 404


class GoneError(NotFoundError):
    """It existed but is no longer there (a capture deleted, or pruned by its disk budget)."""

    status_code = 410


class ConflictError(GraftError):
    """The request clashes with the current state (a job already running, a label clash...)."""

    status_code = 409


class PayloadTooLargeError(UserInputError):
    """An upload over the configured size limit, refused while it streams in."""

    status_code = 413


class RequestTimeoutError(UserInputError):
    """A request body that did not arrive in time (a client trickling bytes holds a connection for nothing)."""

    status_code = 408


class InvalidSampleError(UserInputError):
    """A labelled sample that cannot be stored: not an image, empty, or a bad label."""


class ConfigError(GraftError):
    """Settings that would make the service unsafe or unable to run; it refuses to start."""


class UpstreamError(GraftError):
    """A service we depend on (TorchServe, the training runner) failed or did not answer."""

    status_code = 502


class ClusterError(UpstreamError):
    """The Kubernetes API refused a request or could not be reached (RBAC, quota, network...)."""


class RolloutError(ClusterError):
    """A Kubernetes rolling update did not complete; the pods of the previous template keep serving."""
