"""``GRAFT_RUNNER=pytorchjob``: each retraining job is a Training Operator ``PyTorchJob`` (``kubeflow.org/v1``),
for clusters that have not moved to Kubeflow Trainer v2 (the operator is maintained on its release-1.9 branch).

One Master replica and ``num_nodes - 1`` Workers, each running ``torchrun -m graft.cli train --config
FILE`` in the container the operator expects (``pytorch``); with ``nprocPerNode`` set, the operator gives
torchrun its ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and
``PET_MASTER_PORT``. The pods are the Job runner's (same volumes, checks, security context). Kueue's queue
goes in ``runPolicy.schedulingPolicy.queue`` and the queue label.
"""

from __future__ import annotations

import copy
from typing import Any

from admin.cluster import load_api_client
from admin.runners.base import RunnerStatus, TrainRequest
from admin.runners.custom_jobs import CustomJobRunner, JobKind, condition, describe
from admin.runners.kube_jobs import active_deadline
from admin.runners.trainjob import TORCHRUN, TrainerConfig, job_parts

CONTAINER = "pytorch"  # the operator finds the training container, and sets its env, by this name


def build_pytorchjob(request: TrainRequest, cfg: TrainerConfig) -> dict[str, Any]:
    metadata, pod, container = job_parts(request, cfg)
    container = {**container, "name": CONTAINER, "command": TORCHRUN, "args": request.argv()}
    # A failed rank fails the run (the job logic decides about retrying), as the Job runner's restartPolicy.
    template = {"metadata": {"labels": metadata["labels"], "annotations": metadata["annotations"]},
                "spec": {**pod, "containers": [container]}}  # fmt: skip
    replicas: dict[str, Any] = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template}}
    if cfg.num_nodes > 1:
        workers = cfg.num_nodes - 1
        replicas["Worker"] = {"replicas": workers, "restartPolicy": "Never", "template": copy.deepcopy(template)}
    run_policy: dict[str, Any] = {
        "cleanPodPolicy": "None",  # keep finished pods' logs until the TTL removes the job
        "backoffLimit": cfg.backoff_limit,
        "activeDeadlineSeconds": active_deadline(request, cfg),
        "ttlSecondsAfterFinished": cfg.ttl_seconds_after_finished,
    }
    if cfg.queue_name:
        run_policy["schedulingPolicy"] = {"queue": cfg.queue_name}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": metadata,
        "spec": {"nprocPerNode": str(cfg.procs_per_node()), "runPolicy": run_policy, "pytorchReplicaSpecs": replicas},
    }


def status_from_pytorchjob(obj: dict[str, Any], progress: float) -> RunnerStatus:
    """PyTorchJob conditions: Succeeded / Failed end it; Suspended is pending; Running is running."""
    if done := condition(obj, "Succeeded"):
        return RunnerStatus(state="succeeded", progress=1.0, message=describe(done))
    if failed := condition(obj, "Failed"):
        return RunnerStatus(state="failed", progress=progress, message=describe(failed))
    if suspended := condition(obj, "Suspended"):
        return RunnerStatus(state="pending", progress=progress, message=f"suspended: {describe(suspended)}")
    if condition(obj, "Running"):
        return RunnerStatus(state="running", progress=progress, message="training")
    if restarting := condition(obj, "Restarting"):
        return RunnerStatus(state="running", progress=progress, message=describe(restarting))
    return RunnerStatus(state="pending", progress=progress, message="waiting for the training pods")


PYTORCHJOB = JobKind("PyTorchJob", "kubeflow.org", "v1", "pytorchjobs", build_pytorchjob, status_from_pytorchjob)  # type: ignore[arg-type]


def build_runner(settings: Any, kubeconfig: str | None = None) -> CustomJobRunner:
    """The runner for ``GRAFT_RUNNER=pytorchjob``; refuses to start when the cluster has no PyTorchJob CRD."""
    from admin.runners.discovery import require_kind

    api = load_api_client(kubeconfig)
    require_kind(api, "pytorchjob")
    return CustomJobRunner(api, TrainerConfig(), PYTORCHJOB)
