"""Pure builders for training Jobs: the ``batch/v1`` Job for a TrainRequest and its status mapping.

No API calls here, so the exact object sent to the cluster is easy to read and to test. The pod
satisfies the ``restricted`` Pod Security Standard (the namespace enforces it, see deploy/base).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path, PurePosixPath

from kubernetes import client

from admin.cluster import KubeConfig
from admin.runners.base import RunnerStatus, TrainRequest
from graft.core.errors import UserInputError

APP_LABELS = {"app.kubernetes.io/name": "graft", "app.kubernetes.io/part-of": "graft"}
JOB_ID_LABEL = "graft.io/job-id"
JOB_ID_ANNOTATION = "graft.io/job-id"
OUTPUT_ANNOTATION = "graft.io/output-dir"
TRAIN_CONTAINER = "train"
EVAL_REQUEST_ENV = "GRAFT_EVAL_REQUEST"
# Training, then the gate's predictions in the same pod. A failed training fails the pod (as before); a
# failed evaluation does not: a failed pod would make the Job train again (backoffLimit) and hide the error,
# while the admin, finding no valid predictions, evaluates in its own child process and reports the error.
TRAIN_THEN_EVALUATE = (
    'graft "$@" || exit $?; '
    f'graft job-eval "${EVAL_REQUEST_ENV}" || echo "graft job-eval failed (status $?): the admin evaluates" >&2'
)
_MAX_NAME = 63  # the Job name becomes the pods' job-name label value


def job_name(prefix: str, job_id: str) -> str:
    """A DNS-1123 label for ``job_id``; a hash suffix keeps ids that had to be changed unique."""
    clean = re.sub(r"[^a-z0-9-]+", "-", job_id.lower()).strip("-")
    name = f"{prefix}-{clean}" if clean else prefix
    if clean != job_id or len(name) > _MAX_NAME:
        digest = hashlib.sha256(job_id.encode()).hexdigest()[:8]
        name = f"{name[: _MAX_NAME - 9].rstrip('-')}-{digest}"
    return name


def label_value(text: str) -> str:
    """``text`` squeezed into a label value (63 chars of [A-Za-z0-9_.-], alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:_MAX_NAME]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def _check_under(path: Path, root: Path, what: str) -> None:
    if not PurePosixPath(os.path.normpath(path)).is_relative_to(PurePosixPath(os.path.normpath(root))):
        raise UserInputError(
            f"{what} {str(path)!r} is not under the data volume {str(root)!r}; a training Job only sees "
            "that volume. Keep manifests, samples and run folders under GRAFT_KUBE_DATA_MOUNT_PATH."
        )


def _relative(path: Path, cfg: KubeConfig) -> str:
    """``path`` inside the data volume (checked to be under it by build_job)."""
    return str(PurePosixPath(os.path.normpath(path)).relative_to(PurePosixPath(os.path.normpath(cfg.data_mount_path))))


def _security_context() -> client.V1SecurityContext:
    return client.V1SecurityContext(
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        run_as_non_root=True,
        capabilities=client.V1Capabilities(drop=["ALL"]),
    )


def _volumes(cfg: KubeConfig) -> list[client.V1Volume]:
    return [
        client.V1Volume(
            name="data", persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name=cfg.data_pvc)
        ),
        client.V1Volume(name="tmp", empty_dir=client.V1EmptyDirVolumeSource(size_limit="10Gi")),
        # PyTorch DataLoader workers pass batches through shared memory; the default 64 MiB is too small.
        client.V1Volume(name="dshm", empty_dir=client.V1EmptyDirVolumeSource(medium="Memory", size_limit=cfg.shm_size)),
    ]


def active_deadline(request: TrainRequest, cfg: KubeConfig) -> int:
    """The run's ``activeDeadlineSeconds``: what is left of the job's budget, never past the configured cap."""
    if request.timeout_s is None:
        return cfg.active_deadline_seconds
    return max(1, min(cfg.active_deadline_seconds, math.ceil(request.timeout_s)))


def _command(request: TrainRequest) -> tuple[list[str], list[str]]:
    """``graft train ...``, followed by ``graft job-eval REQUEST`` when the job asks for its evaluation here."""
    if request.evaluation is None:
        return ["graft"], request.argv()
    return ["sh", "-c"], [TRAIN_THEN_EVALUATE, "graft", *request.argv()]  # "$0" is "graft", "$@" the argv


def _writable(request: TrainRequest, cfg: KubeConfig) -> list[client.V1VolumeMount]:
    """The run folder and, with an evaluation, the folder of its request (where the predictions go)."""
    folders = [request.output_dir] + ([request.evaluation.parent] if request.evaluation is not None else [])
    return [client.V1VolumeMount(name="data", mount_path=str(f), sub_path=_relative(f, cfg)) for f in folders]


def _container(request: TrainRequest, cfg: KubeConfig) -> client.V1Container:
    limits = {"memory": cfg.memory_limit}
    if cfg.gpu_count > 0:
        limits[cfg.gpu_resource] = str(cfg.gpu_count)
    env = {"GRAFT_JOB_ID": request.job_id, "HOME": "/tmp", "MPLCONFIGDIR": "/tmp/matplotlib", "PYTHONUNBUFFERED": "1"}
    if request.evaluation is not None:
        env[EVAL_REQUEST_ENV] = str(request.evaluation)
    command, args = _command(request)
    return client.V1Container(
        name=TRAIN_CONTAINER,
        image=cfg.image,
        image_pull_policy=cfg.image_pull_policy,
        command=command,
        args=args,
        env=[client.V1EnvVar(name=k, value=v) for k, v in env.items()],
        resources=client.V1ResourceRequirements(
            requests={"cpu": cfg.cpu_request, "memory": cfg.memory_request}, limits=limits
        ),
        security_context=_security_context(),
        volume_mounts=[
            # The data volume read-only (samples, manifests, the config, a parent run; the admin's database
            # is not on it), and the job's own run folder (and evaluation folder) the writable places on it.
            client.V1VolumeMount(name="data", mount_path=str(cfg.data_mount_path), read_only=True),
            *_writable(request, cfg),
            client.V1VolumeMount(name="tmp", mount_path="/tmp"),
            client.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
        ],
    )


def _pod_spec(request: TrainRequest, cfg: KubeConfig) -> client.V1PodSpec:
    return client.V1PodSpec(
        restart_policy="Never",
        automount_service_account_token=False,
        enable_service_links=False,
        priority_class_name=cfg.priority_class_name,
        node_selector=cfg.node_selector or None,
        tolerations=[client.V1Toleration(**t) for t in cfg.tolerations] or None,
        security_context=client.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=cfg.run_as_user,
            run_as_group=cfg.run_as_user,
            fs_group=cfg.run_as_user,
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        ),
        containers=[_container(request, cfg)],
        volumes=_volumes(cfg),
    )


def build_job(request: TrainRequest, cfg: KubeConfig) -> client.V1Job:
    """The Job that runs ``graft <request.argv()>`` on a GPU node with the data volume mounted."""
    named = [("training config", request.config_file), ("output folder", request.output_dir)]
    if request.evaluation is not None:
        named.append(("evaluation request", request.evaluation))
    for what, path in [*named, *(("input", p) for p in request.inputs)]:
        _check_under(path, cfg.data_mount_path, what)
    labels = {**APP_LABELS, "app.kubernetes.io/component": "training", JOB_ID_LABEL: label_value(request.job_id)}
    annotations = {JOB_ID_ANNOTATION: request.job_id, OUTPUT_ANNOTATION: str(request.output_dir)}
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=client.V1ObjectMeta(
            name=job_name(cfg.job_name_prefix, request.job_id), labels=labels, annotations=annotations
        ),
        spec=client.V1JobSpec(
            backoff_limit=cfg.backoff_limit,
            active_deadline_seconds=active_deadline(request, cfg),
            ttl_seconds_after_finished=cfg.ttl_seconds_after_finished,
            # A node drain or preemption is not the training's fault: do not count it against backoffLimit.
            pod_failure_policy=client.V1PodFailurePolicy(
                rules=[
                    client.V1PodFailurePolicyRule(
                        action="Ignore",
                        on_pod_conditions=[
                            client.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")
                        ],
                    )
                ]
            ),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels, annotations=annotations), spec=_pod_spec(request, cfg)
            ),
        ),
    )


def _condition(job: client.V1Job, *types: str) -> client.V1JobCondition | None:
    for cond in (job.status.conditions if job.status else None) or []:
        if cond.type in types and cond.status == "True":
            return cond
    return None


def _describe(cond: client.V1JobCondition) -> str:
    return ": ".join(part for part in (cond.reason, cond.message) if part) or cond.type


def status_from_job(job: client.V1Job, progress: float) -> RunnerStatus:
    """Map a Job's conditions (and active pods) to the runner's four states."""
    done = _condition(job, "Complete", "SuccessCriteriaMet")
    if done is not None:
        return RunnerStatus(state="succeeded", progress=1.0, message=_describe(done))
    failed = _condition(job, "Failed", "FailureTarget")
    if failed is not None:
        return RunnerStatus(state="failed", progress=progress, message=_describe(failed))
    if job.metadata and job.metadata.deletion_timestamp is not None:
        return RunnerStatus(state="failed", progress=progress, message="cancelled: the Job is being deleted")
    suspended = _condition(job, "Suspended")
    if suspended is not None:
        return RunnerStatus(state="pending", progress=progress, message=_describe(suspended))
    # status.active also counts pods still waiting for a node; status.ready counts the ones running.
    if job.status is not None and (job.status.ready or 0) > 0:
        return RunnerStatus(state="running", progress=progress, message="training")
    return RunnerStatus(state="pending", progress=progress, message="waiting for a pod")


def read_progress(output_dir: str | None) -> float:
    """``RUN_DIR/progress.json``'s fraction (0 when absent or unreadable: progress is best effort)."""
    if not output_dir:
        return 0.0
    try:
        data = json.loads((Path(output_dir) / "progress.json").read_text())
        return min(1.0, max(0.0, float(data.get("fraction", 0.0))))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0
