"""Settings of the Kubernetes job runner and rollout, and the API client they share.

Every field can come from the environment with the ``GRAFT_KUBE_`` prefix (the admin Deployment in
``deploy/base/admin-deployment.yaml`` sets them), e.g. ``GRAFT_KUBE_NAMESPACE``, ``GRAFT_KUBE_GPU_COUNT``;
mappings and lists are given as JSON. Nothing here talks to a cluster until :func:`load_api_client` runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from graft.core.errors import ClusterError, ConfigError

log = logging.getLogger(__name__)

GPU_TOLERATION: dict[str, str] = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


class KubeConfig(BaseSettings):
    """Where the admin finds the cluster objects it drives, and how training Jobs are shaped."""

    model_config = SettingsConfigDict(env_prefix="GRAFT_KUBE_", extra="ignore")

    namespace: str = "graft"
    # Image of the training Jobs: the inference image (kustomize copies it here, see the overlays).
    image: str = "graft:latest"
    image_pull_policy: str = "IfNotPresent"

    # The inference Deployment that the rollout patches, and its TorchServe container.
    inference_deployment: str = "graft-inference"
    inference_container: str = "torchserve"
    # The model-store PVC as mounted in the admin pod (the inference pods mount the same claim read-only).
    model_store_dir: Path = Path("/srv/graft/model-store")
    # The inference Service, for the smoke test of a freshly deployed version.
    inference_url: str = "http://graft-inference:8080"

    # The admin's data PVC (samples, manifests, run folders); Jobs mount it at the same path so that
    # the absolute paths in a TrainRequest and in the dataset manifest mean the same thing there.
    data_pvc: str = "graft-admin-data"
    data_mount_path: Path = Path("/var/lib/graft")

    # Training Job shape.
    job_name_prefix: str = "graft-train"
    gpu_count: int = Field(default=1, ge=0)
    gpu_resource: str = "nvidia.com/gpu"
    cpu_request: str = "4"
    memory_request: str = "16Gi"
    memory_limit: str = "32Gi"
    shm_size: str = "8Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=lambda: [dict(GPU_TOLERATION)])
    active_deadline_seconds: int = Field(default=6 * 3600, gt=0)
    backoff_limit: int = Field(default=1, ge=0)
    ttl_seconds_after_finished: int = Field(default=7 * 24 * 3600, ge=0)
    priority_class_name: str | None = None
    run_as_user: int = 10001

    # Rollout.
    rollout_timeout_s: float = Field(default=1800.0, gt=0)
    poll_interval_s: float = Field(default=5.0, gt=0)
    # Per API call, so that ``status()`` never blocks for long.
    request_timeout_s: float = Field(default=10.0, gt=0)


def load_api_client(kubeconfig: str | None = None) -> Any:
    """An authenticated ``kubernetes.client.ApiClient``: in-cluster service account, else a kubeconfig.

    Called by the ``from_config`` constructors only, never at import time.
    """
    from kubernetes import client, config

    try:
        if kubeconfig is None:
            config.load_incluster_config()
            log.info("kubernetes: using the in-cluster service account")
            return client.ApiClient()
    except config.ConfigException:
        log.info("kubernetes: not in a cluster, falling back to the kubeconfig")
    try:
        return config.new_client_from_config(config_file=kubeconfig)
    except (config.ConfigException, OSError) as e:
        raise ConfigError(
            f"no Kubernetes credentials: not running in a pod and no usable kubeconfig ({e}). "
            "Run the admin in the cluster (deploy/overlays/*) or set KUBECONFIG."
        ) from e


def api_error(action: str, e: Any) -> ClusterError:
    """A typed error that says what was refused and why (the API server's own message when it has one)."""
    detail = e.reason or ""
    body = getattr(e, "body", None)
    if body:
        detail = f"{detail}: {str(body)[:300]}"
    hint = " (check the admin's Role in deploy/base/admin-rbac.yaml)" if e.status == 403 else ""
    return ClusterError(f"kubernetes refused to {action}: HTTP {e.status} {detail}{hint}")
