"""Where a training run happens, as a protocol: :class:`JobRunner`, with two implementations.

A local child process (admin/runners/local.py, the default) or a Kubernetes Job
(admin/runners/kubernetes.py). The job logic (snapshot, train, gate, export, promote) talks to this
protocol only, so it is the same whichever implementation the settings select.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

RunnerState = Literal["pending", "running", "succeeded", "failed"]


@dataclass(frozen=True)
class TrainRequest:
    """One training run: ``graft train --config CONFIG_FILE``, the file written by the job (a TrainConfig)."""

    job_id: str
    config_file: Path
    output_dir: Path  # the run folder the config names: where progress.json appears
    # Files and folders the run reads (the manifest, a parent run): a Kubernetes Job must see them too.
    inputs: tuple[Path, ...] = ()
    # The gate's evaluation request (``graft job-eval FILE``): a runner that can, runs it after training,
    # in the same pod, and writes the predictions beside it (admin/domain/job_evaluation.py). Others ignore it.
    evaluation: Path | None = None
    # Seconds left of the job's budget (GRAFT_JOB_TIMEOUT_S) when it is submitted: the run's own deadline.
    timeout_s: float | None = None

    def argv(self) -> list[str]:
        """The ``graft`` arguments for this request (shared by every runner)."""
        return ["train", "--config", str(self.config_file)]


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
