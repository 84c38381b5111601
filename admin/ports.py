"""The two moving parts of the control plane, as protocols with two implementations each.

* :class:`JobRunner` runs one training job: a local subprocess (default) or a Kubernetes Job.
* :class:`Rollout` puts a new model version in service: TorchServe's management API hot swap
  (default, one server) or a Kubernetes rolling update of the inference Deployment.

The admin service talks to these protocols only, so the job logic (snapshot, train, gate,
export, promote) is the same whichever implementation the settings select.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

RunnerState = Literal["pending", "running", "succeeded", "failed"]


@dataclass(frozen=True)
class TrainRequest:
    """One training run: ``graft train --manifest manifest --output output_dir`` plus recipe flags."""

    job_id: str
    manifest: Path
    output_dir: Path
    # Recipe overrides as CLI flag names without dashes, e.g. {"epochs": 5, "backbone": "resnet18"}.
    overrides: dict[str, Any] = field(default_factory=dict)
    # Warm start: the run folder of the champion to start from.
    parent_run: Path | None = None

    def argv(self) -> list[str]:
        """The ``graft train`` arguments for this request (shared by every runner)."""
        args = ["train", "--manifest", str(self.manifest), "--output", str(self.output_dir)]
        if self.parent_run is not None:
            args += ["--init-from", str(self.parent_run)]
        for key, value in sorted(self.overrides.items()):
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                if value:
                    args.append(flag)
                continue
            args += [flag, str(value)]
        return args


@dataclass(frozen=True)
class RunnerStatus:
    state: RunnerState
    progress: float = 0.0  # 0..1, from RUN_DIR/progress.json when available
    message: str = ""


class JobRunner(Protocol):
    def submit(self, request: TrainRequest) -> None:
        """Start the run and return at once; raise :class:`graft.errors.GraftError` if it cannot start."""

    def status(self, job_id: str) -> RunnerStatus:
        """Where the run stands now (never blocks for long)."""

    def cancel(self, job_id: str) -> None:
        """Stop the run if it is still going; a no-op otherwise."""


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
