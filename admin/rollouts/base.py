"""How a model version goes into service, as a protocol: :class:`Rollout`, with two implementations.

TorchServe's management API hot swap (admin/rollouts/torchserve.py, the default, one server) or a
Kubernetes rolling update of the inference Deployment (admin/rollouts/kubernetes.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable


class Rollout(Protocol):
    def deploy(self, model_name: str, version: str, mar_path: Path) -> None:
        """Register ``version`` beside the one in service and wait until it answers.

        Must not change which version is the default. Raise on failure, leaving the champion serving.
        """

    def set_default(self, model_name: str, version: str) -> None:
        """Make ``version`` (already deployed) the one that answers unversioned requests."""

    def retire(self, model_name: str, version: str) -> None:
        """Stop serving ``version`` (never the default)."""

    def versions(self, model_name: str) -> list[str]:
        """The versions currently deployed."""


# Optional capabilities a Rollout may offer; the job uses them when present (isinstance checks).


@runtime_checkable
class SmokeTestable(Protocol):
    def smoke_test(self, model_name: str, version: str, images: Sequence[Path], labels: Sequence[str]) -> None:
        """Send real images to ``version`` explicitly (not the default); raise if any answer is wrong."""


@runtime_checkable
class DefaultAware(Protocol):
    def default_version(self, model_name: str) -> str | None:
        """The version that answers unversioned requests now, or None when the model is not served."""


@runtime_checkable
class Replayable(Protocol):
    def predict(self, model_name: str, version: str, payload: bytes) -> list[tuple[str, float]]:
        """``version``'s answer to one encoded image, [(label, score)] most probable first, never captured."""
