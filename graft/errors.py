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


class ArtifactError(GraftError):
    """A run folder or model archive that is incomplete or inconsistent."""

    status_code = 422


class ExportError(GraftError):
    """Export produced something that does not match the PyTorch model."""
