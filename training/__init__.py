"""The training engine: fine-tune a zoo backbone with frozen early stages; export it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.config import TrainConfig
    from training.engine import FitResult

__all__ = ["TrainConfig", "fit"]


def fit(config: TrainConfig) -> FitResult:
    """Train per ``config``; see :func:`training.engine.fit`."""
    from training.engine import fit as _fit

    return _fit(config)


def __getattr__(name: str) -> Any:
    # Lazy: importing ``training`` must not import torch's heavy pieces or matplotlib.
    if name == "TrainConfig":
        from training.config import TrainConfig

        return TrainConfig
    raise AttributeError(name)
