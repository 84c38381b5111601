"""Which training runners a cluster can take: API discovery of the training operators' CRDs.

Discovery (``GET /apis/GROUP/VERSION``) needs no RBAC beyond what every authenticated account has
(``system:discovery``). The admin runs it at start-up for the CRD runners and refuses to start with one
whose CRD is missing, naming the runner that would work.
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from admin.cluster import api_error
from graft.core.errors import ConfigError

log = logging.getLogger(__name__)

# runner -> (group, version, plural, what to install)
CRDS: dict[str, tuple[str, str, str, str]] = {
    "trainjob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "Kubeflow Trainer v2"),
    "pytorchjob": ("kubeflow.org", "v1", "pytorchjobs", "the Kubeflow Training Operator (release 1.9)"),
}


def available_runners(api_client: Any) -> list[str]:
    """The CRD runners whose resource the API server serves, in order of preference; ``kubernetes`` (plain
    Jobs) is always possible and comes last."""
    api = client.CustomObjectsApi(api_client)
    found = []
    for runner, (group, version, plural, _) in CRDS.items():
        try:
            resources = api.get_api_resources(group, version, _request_timeout=10)
        except ApiException as e:
            if e.status == 404:
                continue
            raise api_error(f"discover {group}/{version}", e) from e
        if any(r.name == plural for r in (resources.resources or [])):
            found.append(runner)
    return [*found, "kubernetes"]


def require_kind(api_client: Any, runner: str) -> None:
    """Raise ConfigError, naming the runner to use instead, when ``runner``'s CRD is not served."""
    group, version, plural, product = CRDS[runner]
    available = available_runners(api_client)
    if runner in available:
        log.info("runner %s: %s.%s/%s is served", runner, plural, group, version)
        return
    raise ConfigError(
        f"GRAFT_RUNNER={runner} needs the {plural}.{group} ({version}) resource of {product}, which this cluster "
        f"does not serve. Install it, or set GRAFT_RUNNER={available[0]}"
        + (" (plain Kubernetes Jobs, one process per job)" if available[0] == "kubernetes" else "")
    )
