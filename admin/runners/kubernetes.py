"""Training as ``batch/v1`` Jobs: :class:`KubernetesJobRunner` implements :class:`admin.runners.base.JobRunner`.

It talks to the API server through the official ``kubernetes`` client only, and is selected by the
admin settings (runner ``kubernetes``). Build it with ``from_config()``, which loads the in-cluster
service account (or a kubeconfig) at that moment, never at import time. The Job itself is built by the
pure functions of admin/runners/kube_jobs.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from admin.cluster import KubeConfig, api_error, load_api_client
from admin.runners.base import RunnerStatus, TrainRequest
from admin.runners.kube_jobs import OUTPUT_ANNOTATION, build_job, job_name, read_progress, status_from_job
from graft.core.errors import ConflictError

log = logging.getLogger(__name__)

__all__ = ["KubeConfig", "KubernetesJobRunner", "build_runner"]

# Waiting reasons that will not cure themselves: say so in the job's status message.
_STUCK_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CrashLoopBackOff"}
)


class KubernetesJobRunner:
    """Runs ``graft train`` as a Kubernetes Job on a GPU node; the Job's conditions are its status."""

    def __init__(self, api_client: Any, cfg: KubeConfig) -> None:
        self.cfg = cfg
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self._timeout = cfg.request_timeout_s

    @classmethod
    def from_config(cls, cfg: KubeConfig | None = None, kubeconfig: str | None = None) -> KubernetesJobRunner:
        """Connect with the in-cluster service account (or ``kubeconfig``); ``cfg`` defaults to the environment."""
        cfg = cfg or KubeConfig()
        return cls(load_api_client(kubeconfig), cfg)

    @property
    def evaluates_under(self) -> Path:
        """The gate's predictions run in the Job itself (``TrainRequest.evaluation``, after training) when
        the models and images are under this folder, the data volume as the Job mounts it."""
        return self.cfg.data_mount_path

    def _name(self, job_id: str) -> str:
        return job_name(self.cfg.job_name_prefix, job_id)

    def submit(self, request: TrainRequest) -> None:
        job = build_job(request, self.cfg)
        name = job.metadata.name if job.metadata else self._name(request.job_id)
        try:
            self.batch.create_namespaced_job(self.cfg.namespace, job, _request_timeout=self._timeout)
        except ApiException as e:
            if e.status == 409:
                raise ConflictError(f"a training Job named {name!r} already exists for job {request.job_id!r}") from e
            raise api_error(f"create training Job {name!r}", e) from e
        log.info("submitted training Job %s/%s for job %s", self.cfg.namespace, name, request.job_id)

    def status(self, job_id: str) -> RunnerStatus:
        name = self._name(job_id)
        try:
            job = self.batch.read_namespaced_job(name, self.cfg.namespace, _request_timeout=self._timeout)
        except ApiException as e:
            if e.status == 404:
                return RunnerStatus(state="failed", message=f"training Job {name!r} not found (deleted or expired)")
            raise api_error(f"read training Job {name!r}", e) from e
        annotations = (job.metadata.annotations if job.metadata else None) or {}
        result = status_from_job(job, read_progress(annotations.get(OUTPUT_ANNOTATION)))
        if result.state == "pending":
            detail = self._pod_problem(name)
            if detail:
                return RunnerStatus(state=result.state, progress=result.progress, message=detail)
        return result

    def _pod_problem(self, name: str) -> str:
        """Why the Job's pod is not running yet (unschedulable, image pull...), or '' when nothing is known."""
        try:
            pods = self.core.list_namespaced_pod(
                self.cfg.namespace, label_selector=f"job-name={name}", _request_timeout=self._timeout
            )
        except ApiException as e:
            log.debug("cannot list the pods of %s: %s", name, e)
            return ""
        for pod in pods.items or []:
            for cond in (pod.status.conditions if pod.status else None) or []:
                if cond.type == "PodScheduled" and cond.status == "False":
                    return f"not scheduled: {cond.reason or ''} {cond.message or ''}".strip()
            for cs in (pod.status.container_statuses if pod.status else None) or []:
                waiting = cs.state.waiting if cs.state else None
                if waiting is not None and waiting.reason in _STUCK_REASONS:
                    return f"container {cs.name} stuck: {waiting.reason}: {waiting.message or ''}".strip()
        return ""

    def cancel(self, job_id: str) -> None:
        name = self._name(job_id)
        current = self.status(job_id)
        if current.state in ("succeeded", "failed"):
            return
        try:
            self.batch.delete_namespaced_job(
                name, self.cfg.namespace, propagation_policy="Foreground", _request_timeout=self._timeout
            )
        except ApiException as e:
            if e.status == 404:
                return
            raise api_error(f"delete training Job {name!r}", e) from e
        log.info("cancelled training Job %s/%s", self.cfg.namespace, name)


def build_runner(settings: Any, kubeconfig: str | None = None) -> KubernetesJobRunner:
    """The runner for ``GRAFT_RUNNER=kubernetes``: ``GRAFT_KUBE_*`` from the environment."""
    cfg = KubeConfig()
    state_dir = getattr(settings, "state_dir", None)
    if state_dir is not None and not Path(state_dir).is_relative_to(cfg.data_mount_path):
        log.warning(
            "GRAFT_STATE_DIR %s is not under GRAFT_KUBE_DATA_MOUNT_PATH %s: training Jobs will not see it",
            state_dir,
            cfg.data_mount_path,
        )
    return KubernetesJobRunner.from_config(cfg, kubeconfig)
