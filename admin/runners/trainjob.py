"""``GRAFT_RUNNER=trainjob``: each retraining job is a Kubeflow Trainer v2 ``TrainJob``
(``trainer.kubeflow.org/v1alpha1``).

The TrainJob names a training runtime (``runtimeRef``, default the ``torch-distributed``
ClusterTrainingRuntime) and sets what graft decides: the image, ``torchrun -m graft.cli train --config
FILE`` (torchrun reads ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and
``PET_MASTER_PORT``, which the runtime's torch plugin injects), ``numNodes``, ``numProcPerNode`` and
``resourcesPerNode``. The pod-level settings (the data volume with the job's ``train-config.json``, the
snapshot manifest and the run folder; the restricted security context; node selector and tolerations) are
the Job runner's (admin/runners/kube_jobs.py), applied to the runtime's ``node`` job through
``runtimePatches`` (the v1alpha1 API of the CRD kept under deploy/kubeflow/schemas/), or through the
``podTemplateOverrides`` it replaced, for older Trainer releases (``GRAFT_KUBE_TRAINJOB_PATCH_API``).
With ``GRAFT_KUBE_QUEUE_NAME`` the TrainJob carries Kueue's queue label: Kueue then
admits it by suspending and resuming it, which the status reports as pending with Kueue's reason.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from kubernetes import client
from pydantic import Field

from admin.cluster import KubeConfig, load_api_client
from admin.runners.base import RunnerStatus, TrainRequest
from admin.runners.custom_jobs import CustomJobRunner, JobKind, condition, describe
from admin.runners.kube_jobs import active_deadline, build_job

TRAINER_GROUP = "trainer.kubeflow.org"
NODE_JOB = "node"  # the trainer's replicated job (and container) in Kubeflow's torch runtimes
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# torchrun takes the rendezvous from the PET_* variables the runtime sets; graft.cli is the program.
TORCHRUN = ["torchrun", "-m", "graft.cli"]
PATCH_MANAGER = "graft.io/admin"  # this admin's entry in runtimePatches (Kueue and webhooks own theirs)


class TrainerConfig(KubeConfig):
    """KubeConfig plus the shape of a distributed run (``GRAFT_KUBE_*`` like the rest)."""

    trainjob_runtime: str = "torch-distributed"
    trainjob_runtime_kind: str = Field(default="ClusterTrainingRuntime", pattern="^(Cluster)?TrainingRuntime$")
    num_nodes: int = Field(default=1, ge=1)
    # Processes per node: one per GPU (gpu_count), or this many CPU processes when gpu_count is 0.
    num_proc_per_node: int | None = Field(default=None, ge=1)
    queue_name: str | None = None  # Kueue LocalQueue; None: no queue label
    # How the pod settings reach the runtime's node job: runtimePatches (current API) or podTemplateOverrides.
    trainjob_patch_api: Literal["runtimePatches", "podTemplateOverrides"] = "runtimePatches"

    def procs_per_node(self) -> int:
        return self.num_proc_per_node or max(1, self.gpu_count)


def _sanitize(obj: Any) -> Any:
    return client.ApiClient().sanitize_for_serialization(obj)


def job_parts(request: TrainRequest, cfg: TrainerConfig) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(metadata, pod spec, container) of the Job runner's pod for ``request``: the same volumes, checks and
    security context, whatever resource carries them."""
    # The gate's evaluation stays in the admin for these (every rank runs the same command): no request here.
    job = _sanitize(build_job(replace(request, evaluation=None), cfg))
    metadata = job["metadata"]
    if cfg.queue_name:
        metadata["labels"][QUEUE_LABEL] = cfg.queue_name
    pod = job["spec"]["template"]["spec"]
    return metadata, pod, pod["containers"][0]


def _pod_patch(metadata: dict[str, Any], pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    """The Job runner's pod settings as a patch of the runtime's node pods (labels, volumes, security)."""
    node = {"name": NODE_JOB, "volumeMounts": container["volumeMounts"]}
    node["securityContext"] = container["securityContext"]  # restricted PSS, whatever the runtime's image sets
    spec: dict[str, Any] = {"securityContext": pod["securityContext"], "volumes": pod["volumes"], "containers": [node]}
    for key in ("nodeSelector", "tolerations"):
        if key in pod:
            spec[key] = pod[key]
    return {"metadata": {"labels": metadata["labels"], "annotations": metadata["annotations"]}, "spec": spec}


def build_trainjob(request: TrainRequest, cfg: TrainerConfig) -> dict[str, Any]:
    metadata, pod, container = job_parts(request, cfg)
    patch = _pod_patch(metadata, pod, container)
    spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": TRAINER_GROUP, "kind": cfg.trainjob_runtime_kind, "name": cfg.trainjob_runtime},
        "trainer": {
            "image": container["image"],
            "command": TORCHRUN,
            "args": request.argv(),
            "env": container["env"],
            "numNodes": cfg.num_nodes,
            "numProcPerNode": cfg.procs_per_node(),
            "resourcesPerNode": container["resources"],
        },
        "activeDeadlineSeconds": active_deadline(request, cfg),
    }
    if cfg.trainjob_patch_api == "runtimePatches":
        job = {"name": NODE_JOB, "template": {"spec": {"template": patch}}}
        spec["runtimePatches"] = [
            {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [job]}}}}
        ]
    else:
        spec.pop("activeDeadlineSeconds")  # not in the releases that have podTemplateOverrides
        spec["podTemplateOverrides"] = [{"targetJobs": [{"name": NODE_JOB}], **patch}]
    return {"apiVersion": f"{TRAINER_GROUP}/v1alpha1", "kind": "TrainJob", "metadata": metadata, "spec": spec}


def status_from_trainjob(obj: dict[str, Any], progress: float) -> RunnerStatus:
    """TrainJob conditions: Complete / Failed end it; Suspended (Kueue has not admitted it, or it was
    preempted) is pending; a ready child Job is running."""
    if done := condition(obj, "Complete"):
        return RunnerStatus(state="succeeded", progress=1.0, message=describe(done))
    if failed := condition(obj, "Failed"):
        return RunnerStatus(state="failed", progress=progress, message=describe(failed))
    if suspended := condition(obj, "Suspended"):
        return RunnerStatus(state="pending", progress=progress, message=f"suspended: {describe(suspended)}")
    reported = ((obj.get("status") or {}).get("trainerStatus") or {}).get("progressPercentage")
    if isinstance(reported, int | float):  # the TrainJobStatus feature gate: the runtime's own estimate
        progress = max(progress, min(1.0, reported / 100))
    jobs = (obj.get("status") or {}).get("jobsStatus") or []
    if any((j.get("ready") or 0) > 0 for j in jobs):
        return RunnerStatus(state="running", progress=progress, message="training")
    return RunnerStatus(state="pending", progress=progress, message="waiting for the training pods")


TRAINJOB = JobKind("TrainJob", TRAINER_GROUP, "v1alpha1", "trainjobs", build_trainjob, status_from_trainjob)  # type: ignore[arg-type]


def build_runner(settings: Any, kubeconfig: str | None = None) -> CustomJobRunner:
    """The runner for ``GRAFT_RUNNER=trainjob``; refuses to start when the cluster has no TrainJob CRD."""
    from admin.runners.discovery import require_kind

    api = load_api_client(kubeconfig)
    require_kind(api, "trainjob")
    return CustomJobRunner(api, TrainerConfig(), TRAINJOB)
