"""Training as a custom resource of a training operator (Kubeflow Trainer's TrainJob, the Training Operator's
PyTorchJob): one runner, :class:`CustomJobRunner`, for every such kind, behind :class:`admin.runners.base.JobRunner`.

A :class:`JobKind` says where the resource lives (group, version, plural), how to build it from a
TrainRequest and how to read its status; admin/runners/trainjob.py and pytorchjob.py define the two kinds.
The API calls go through the official ``kubernetes`` client's CustomObjectsApi, the same transport as
the Job runner (admin/runners/kubernetes.py). Names derive from the job id alone, so a restarted admin
finds, follows and cancels the resources of the jobs it had submitted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from admin.cluster import KubeConfig, api_error
from admin.runners.base import RunnerStatus, TrainRequest
from admin.runners.kube_jobs import OUTPUT_ANNOTATION, job_name, read_progress
from graft.core.errors import ConflictError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobKind:
    kind: str
    group: str
    version: str
    plural: str
    build: Callable[[TrainRequest, Any], dict[str, Any]]
    status: Callable[[dict[str, Any], float], RunnerStatus]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def condition(obj: dict[str, Any], *types: str) -> dict[str, Any] | None:
    """The first of ``types`` among the object's conditions that is True."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") in types and cond.get("status") == "True":
            return dict(cond)
    return None


def describe(cond: dict[str, Any]) -> str:
    return ": ".join(p for p in (cond.get("reason"), cond.get("message")) if p) or str(cond.get("type"))


class CustomJobRunner:
    """Submits, follows and deletes one custom resource per training job."""

    def __init__(self, api_client: Any, cfg: KubeConfig, kind: JobKind) -> None:
        self.cfg, self.kind = cfg, kind
        self.api = client.CustomObjectsApi(api_client)
        self._timeout = cfg.request_timeout_s

    def _name(self, job_id: str) -> str:
        return job_name(self.cfg.job_name_prefix, job_id)

    def _args(self) -> tuple[str, str, str, str]:
        return self.kind.group, self.kind.version, self.cfg.namespace, self.kind.plural

    def submit(self, request: TrainRequest) -> None:
        body = self.kind.build(request, self.cfg)
        name = body["metadata"]["name"]
        try:
            self.api.create_namespaced_custom_object(*self._args(), body, _request_timeout=self._timeout)
        except ApiException as e:
            if e.status == 409:
                what = f"a {self.kind.kind} named {name!r}"
                raise ConflictError(f"{what} already exists for job {request.job_id!r}") from e
            raise api_error(f"create {self.kind.kind} {name!r}", e) from e
        log.info("submitted %s %s/%s for job %s", self.kind.kind, self.cfg.namespace, name, request.job_id)

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            obj = self.api.get_namespaced_custom_object(*self._args(), name, _request_timeout=self._timeout)
        except ApiException as e:
            if e.status == 404:
                return None
            raise api_error(f"read {self.kind.kind} {name!r}", e) from e
        return obj if isinstance(obj, dict) else {}

    def status(self, job_id: str) -> RunnerStatus:
        name = self._name(job_id)
        obj = self._read(name)
        if obj is None:
            return RunnerStatus(state="failed", message=f"{self.kind.kind} {name!r} not found (deleted or expired)")
        if (obj.get("metadata") or {}).get("deletionTimestamp"):
            return RunnerStatus(state="failed", message=f"cancelled: the {self.kind.kind} is being deleted")
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        return self.kind.status(obj, read_progress(annotations.get(OUTPUT_ANNOTATION)))

    def cancel(self, job_id: str) -> None:
        name = self._name(job_id)
        if self.status(job_id).state in ("succeeded", "failed"):
            return
        try:
            # Foreground: the operator's JobSet/pods go before the resource does, so no pod outlives a cancel.
            self.api.delete_namespaced_custom_object(
                *self._args(), name, propagation_policy="Foreground", _request_timeout=self._timeout
            )
        except ApiException as e:
            if e.status == 404:
                return
            raise api_error(f"delete {self.kind.kind} {name!r}", e) from e
        log.info("cancelled %s %s/%s", self.kind.kind, self.cfg.namespace, name)
