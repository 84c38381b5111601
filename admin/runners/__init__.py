"""Where training runs: a local child process (default), a Kubernetes Job, or a training operator's custom
resource (Kubeflow Trainer's TrainJob, the Training Operator's PyTorchJob), behind
:class:`admin.runners.base.JobRunner`."""

from __future__ import annotations

from typing import Any


def build_crd_runner(settings: Any, kubeconfig: str | None = None) -> Any:
    """The runner for ``GRAFT_RUNNER=trainjob`` or ``pytorchjob`` (imported only when chosen)."""
    if settings.runner == "trainjob":
        from admin.runners import trainjob

        return trainjob.build_runner(settings, kubeconfig)
    from admin.runners import pytorchjob

    return pytorchjob.build_runner(settings, kubeconfig)
