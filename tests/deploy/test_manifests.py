"""The container image and the Kubernetes manifests, checked without a Docker engine or a cluster.

Every overlay is rendered with kustomize (``kubectl kustomize``) and every object validated
strictly against the Kubernetes OpenAPI schemas (kubernetes-validate) of the oldest version we
support and the newest the package knows; the security settings, GPU requests, NetworkPolicy,
RBAC, probes and rollout strategy are checked by name. (The image: tests/test_deploy_image.py.)
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.paths import REPO

DEPLOY = REPO / "deploy"
OVERLAYS = ("cpu", "gpu")
K8S_VERSIONS = ("1.31.0", "latest")  # podFailurePolicy is GA from 1.31
MIN_KUSTOMIZE = (5, 0)


def _kustomize_version(cmd: list[str]) -> tuple[int, int] | None:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60).stdout
    found = re.search(r"Kustomize Version: v(\d+)\.(\d+)", out) or re.match(r"\s*v?(\d+)\.(\d+)", out)
    return (int(found.group(1)), int(found.group(2))) if found else None


@functools.cache
def kustomize_cmd() -> list[str]:
    """``kubectl kustomize`` (or ``kustomize build``), new enough for ``labels`` and ``replacements``."""
    for binary, render, version in (
        ("kubectl", ["kustomize"], ["version", "--client"]),
        ("kustomize", ["build"], ["version"]),
    ):
        path = shutil.which(binary)
        if path is None:
            continue
        found = _kustomize_version([path, *version])
        if found is not None and found >= MIN_KUSTOMIZE:
            return [path, *render]
    pytest.skip(
        f"no kustomize >= v{MIN_KUSTOMIZE[0]}.{MIN_KUSTOMIZE[1]} found (kubectl >= 1.27 embeds one; Debian's "
        "kubernetes-client 1.20 is too old): cannot render deploy/overlays"
    )


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    out = subprocess.run(
        [*kustomize_cmd(), str(DEPLOY / "overlays" / request.param)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return request.param, [d for d in yaml.safe_load_all(out.stdout) if d]


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod_spec(obj)["containers"] if c["name"] == name)


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def workloads(objs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield from (o for o in objs if o["kind"] in ("Deployment", "Job"))


def train_job() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "jobs" / "train-job.yaml").read_text())
    return doc


# ------------------------------------------------------------------ schemas


def validate_all(objs: list[dict[str, Any]]) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    for version in K8S_VERSIONS:
        v = kv.utils.latest_version() if version == "latest" else version
        for obj in objs:
            try:
                kv.validate(obj, v, strict=True)
            except kv.ValidationError as e:
                pytest.fail(
                    f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {v}: "
                    f"{'.'.join(map(str, e.path))}: {e.message}"
                )


def test_overlays_render_to_valid_objects(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = overlay
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for expected in [
        ("Deployment", "graft-inference"),
        ("Deployment", "graft-admin"),
        ("Service", "graft-inference"),
        ("HorizontalPodAutoscaler", "graft-inference"),
        ("PodDisruptionBudget", "graft-inference"),
        ("ConfigMap", "graft-torchserve"),
        ("PersistentVolumeClaim", "graft-model-store"),
        ("PersistentVolumeClaim", "graft-admin-data"),
        ("Role", "graft-admin"),
        ("RoleBinding", "graft-admin"),
        ("ServiceAccount", "graft-admin"),
    ]:
        assert expected in kinds
    assert all(o["metadata"].get("namespace") == "graft" for o in objs if o["kind"] != "Namespace")
    validate_all(objs)


def test_the_training_job_template_is_valid() -> None:
    validate_all([train_job()])


# ------------------------------------------------------------------ security


def test_every_pod_meets_the_restricted_standard(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = overlay
    ns = one(objs, "Namespace", "graft")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in [*workloads(objs), train_job()]:
        spec = pod_spec(obj)
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] != 0, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        assert not any("hostPath" in v for v in spec.get("volumes", [])), where
        scratch = {
            m["mountPath"]
            for c in spec["containers"]
            for m in c.get("volumeMounts", [])
            if any(v["name"] == m["name"] and "emptyDir" in v for v in spec["volumes"])
        }
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc == sc | {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": True,
                "capabilities": {"drop": ["ALL"]},
            }, f"{where} {c['name']}"
            assert not sc.get("privileged"), where
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], f"{where} {c['name']}"
        assert "/tmp" in scratch, f"{where}: a read-only root needs a writable /tmp"


def test_torchserve_writes_only_to_its_scratch_volumes(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = overlay
    dep = one(objs, "Deployment", "graft-inference")
    ts = container(dep, "torchserve")
    mounts = {m["mountPath"]: m for m in ts["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(dep)["volumes"]}
    workdir = next(a.split("=", 1)[1] for a in ts["args"] if a.startswith("--workdir="))
    scratch = [p for p, m in mounts.items() if "emptyDir" in volumes[m["name"]]]
    assert any(workdir.startswith(p + "/") for p in scratch) and ts["workingDir"] in scratch
    store = mounts["/models"]
    assert store["readOnly"] is True and volumes[store["name"]]["persistentVolumeClaim"]["readOnly"] is True
    persistent = {p for p, m in mounts.items() if "persistentVolumeClaim" in volumes[m["name"]]}
    assert persistent == {"/models", env(ts)["GRAFT_CAPTURE_DIR"]}, "beyond scratch, only captures are written"


def test_captures_are_off_by_default_and_shared_with_the_admin(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = overlay
    inference, admin = one(objs, "Deployment", "graft-inference"), one(objs, "Deployment", "graft-admin")
    ts, adm = container(inference, "torchserve"), container(admin, "admin")
    assert env(ts)["GRAFT_CAPTURE_RATE"] == "0", "capture is opt-in"
    assert env(ts)["GRAFT_CAPTURE_DIR"] == env(adm)["GRAFT_CAPTURE_DIR"]

    def claim(dep: dict[str, Any], c: dict[str, Any], path: str) -> str:
        name = next(m["name"] for m in c["volumeMounts"] if m["mountPath"] == path)
        return str(next(v for v in pod_spec(dep)["volumes"] if v["name"] == name)["persistentVolumeClaim"]["claimName"])

    path = env(ts)["GRAFT_CAPTURE_DIR"]
    assert claim(inference, ts, path) == claim(admin, adm, path) == "graft-captures"
    assert one(objs, "PersistentVolumeClaim", "graft-captures")["spec"]["accessModes"] == ["ReadWriteMany"]
    budget_mb = int(env(ts)["GRAFT_CAPTURE_BUDGET_MB"])
    size = one(objs, "PersistentVolumeClaim", "graft-captures")["spec"]["resources"]["requests"]["storage"]
    assert budget_mb * 2**20 < int(size.removesuffix("Gi")) * 2**30, "the budget fits the volume"


def test_gpus_only_in_the_gpu_overlay(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objs = overlay
    inference, admin = one(objs, "Deployment", "graft-inference"), one(objs, "Deployment", "graft-admin")
    limits = container(inference, "torchserve")["resources"]["limits"]
    admin_env = env(container(admin, "admin"))
    if name == "gpu":
        assert limits["nvidia.com/gpu"] == "1"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec(inference)[
            "tolerations"
        ]
        assert admin_env["GRAFT_KUBE_GPU_COUNT"] == "1"
        assert container(inference, "torchserve")["image"].endswith("-gpu")
    else:
        assert "nvidia.com/gpu" not in json.dumps(objs)
        assert admin_env["GRAFT_KUBE_GPU_COUNT"] == "0" and admin_env["GRAFT_KUBE_TOLERATIONS"] == "[]"
        assert container(inference, "torchserve")["image"].endswith("-cpu")
    # Training Jobs run the inference image: kustomize copies it into the admin's settings.
    assert admin_env["GRAFT_KUBE_IMAGE"] == container(inference, "torchserve")["image"]


def test_network_policy(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = overlay
    deny = one(objs, "NetworkPolicy", "graft-default-deny-ingress")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    inf = one(objs, "NetworkPolicy", "graft-inference")["spec"]
    adm = one(objs, "NetworkPolicy", "graft-admin")["spec"]
    for policy, dep in ((inf, "graft-inference"), (adm, "graft-admin")):
        labels = one(objs, "Deployment", dep)["spec"]["template"]["metadata"]["labels"]
        assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    by_port = {r["ports"][0]["port"]: r.get("from") for r in inf["ingress"]}
    namespace_only = [{"podSelector": {}}]
    assert by_port[8080] is None  # inference: from wherever the operator exposes it
    assert 8081 not in by_port, "management: no pod may reach it (it listens on the pod's loopback)"
    torchserve = container(one(objs, "Deployment", "graft-inference"), "torchserve")
    assert "--management-address=http://127.0.0.1:8081" in torchserve["args"]
    assert 8081 not in [p["containerPort"] for p in torchserve["ports"]]
    service = one(objs, "Service", "graft-inference")["spec"]
    assert 8081 not in [p["port"] for p in service["ports"]]
    assert {"podSelector": {}} in by_port[8082]  # metrics: this namespace and Prometheus' namespace
    assert all(
        set(peer) == {"podSelector"}
        or peer.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": "monitoring"}
        for peer in by_port[8082]
    )
    assert adm["ingress"] == [{"from": namespace_only, "ports": [{"protocol": "TCP", "port": 8090}]}]


def test_the_admin_may_do_exactly_what_it_needs(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = overlay
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    rules = {
        (r["apiGroups"][0], r["resources"][0]): (sorted(r["verbs"]), r.get("resourceNames"))
        for r in one(objs, "Role", "graft-admin")["rules"]
    }
    assert rules == {
        ("batch", "jobs"): (["create", "delete", "get", "list"], None),
        ("apps", "deployments"): (["get", "patch"], ["graft-inference"]),
        ("", "pods"): (["get", "list"], None),
    }
    binding = one(objs, "RoleBinding", "graft-admin")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "graft-admin"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "graft-admin", "namespace": "graft"}]
    assert one(objs, "ServiceAccount", "graft-admin")["automountServiceAccountToken"] is False
    admin = pod_spec(one(objs, "Deployment", "graft-admin"))
    assert admin["serviceAccountName"] == "graft-admin" and admin["automountServiceAccountToken"] is True
    assert pod_spec(one(objs, "Deployment", "graft-inference"))["automountServiceAccountToken"] is False


def test_admin_token_comes_from_a_secret_file(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = overlay
    dep = one(objs, "Deployment", "graft-admin")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    c = container(dep, "admin")
    e = env(c)
    assert "GRAFT_ADMIN_TOKEN" not in e
    secret = next(v for v in pod_spec(dep)["volumes"] if v["name"] == "admin-token")["secret"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "admin-token")
    assert secret["secretName"] == "graft-admin-token" and mount["readOnly"] is True
    assert e["GRAFT_ADMIN_TOKEN_FILE"] == f"{mount['mountPath']}/{secret['items'][0]['path']}"


# ------------------------------------------------------------------ serving behaviour


def test_probes_and_readiness_gated_rollout(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = overlay
    dep = one(objs, "Deployment", "graft-inference")
    assert "replicas" not in dep["spec"]  # the HPA owns it
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    ts = container(dep, "torchserve")
    probe = ["python", "-m", "graft.torchserve.probe"]
    assert ts["readinessProbe"]["exec"]["command"] == [*probe, "ready"]
    assert ts["startupProbe"]["exec"]["command"] == [*probe, "ready"]
    assert ts["livenessProbe"]["exec"]["command"] == [*probe, "live"]
    init = pod_spec(dep)["initContainers"][0]
    assert init["name"] == "wait-for-model" and "/models/*.mar" in init["command"][-1]
    # The rollout patches these; they exist from the start so that restoring a template is exact.
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["graft.io/default-versions"] == "" and annotations["graft.io/model-store"] == ""
    assert env(ts)["GRAFT_DEFAULT_VERSIONS"] == ""
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8082"
    admin = container(one(objs, "Deployment", "graft-admin"), "admin")
    assert admin["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert admin["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    for probe_name in ("readinessProbe", "livenessProbe"):  # explicit, not the 1 s default (issue 25)
        timeout = admin[probe_name].get("timeoutSeconds")
        assert isinstance(timeout, int) and 2 <= timeout < admin[probe_name]["periodSeconds"], (probe_name, timeout)


def test_hpa_and_pdb_fit_together(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = overlay
    hpa = one(objs, "HorizontalPodAutoscaler", "graft-inference")["spec"]
    pdb = one(objs, "PodDisruptionBudget", "graft-inference")["spec"]
    labels = one(objs, "Deployment", "graft-inference")["spec"]["template"]["metadata"]["labels"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "graft-inference"}
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["minAvailable"] < hpa["minReplicas"]  # a node drain can always evict one pod


def test_admin_settings_match_the_manifests(
    overlay: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from admin.cluster import KubeConfig

    _, objs = overlay
    dep = one(objs, "Deployment", "graft-admin")
    e = {k: v for k, v in env(container(dep, "admin")).items() if isinstance(v, str)}
    unknown = {k for k in e if k.startswith("GRAFT_KUBE_")} - {
        f"GRAFT_KUBE_{f.upper()}" for f in KubeConfig.model_fields
    }
    assert not unknown, f"GRAFT_KUBE_* variables KubeConfig does not know: {unknown}"
    for k, v in e.items():
        monkeypatch.setenv(k, v)
    cfg = KubeConfig()
    mounts = {m["mountPath"]: m["name"] for m in container(dep, "admin")["volumeMounts"]}
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod_spec(dep)["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims[mounts[str(cfg.data_mount_path)]] == cfg.data_pvc == "graft-admin-data"
    assert claims[mounts[str(cfg.model_store_dir)]] == "graft-model-store"
    assert e["GRAFT_MODEL_STORE"] == str(cfg.model_store_dir)
    assert Path(e["GRAFT_STATE_DIR"]).is_relative_to(cfg.data_mount_path)
    assert Path(e["GRAFT_BASE_DATA"]).is_relative_to(cfg.data_mount_path)
    assert e["GRAFT_RUNNER"] == e["GRAFT_ROLLOUT"] == "kubernetes"
    inference = one(objs, "Deployment", "graft-inference")
    assert inference["metadata"]["name"] == cfg.inference_deployment
    container(inference, cfg.inference_container)
    assert one(objs, "PersistentVolumeClaim", "graft-model-store")["spec"]["accessModes"] == ["ReadWriteMany"]
    assert one(objs, "PersistentVolumeClaim", "graft-admin-data")["spec"]["accessModes"] == ["ReadWriteMany"]
    # SQLite (WAL) on a ReadWriteOnce volume of its own, not on the data volume training Jobs mount.
    assert claims[mounts[e["GRAFT_DB_DIR"]]] == "graft-admin-db"
    assert one(objs, "PersistentVolumeClaim", "graft-admin-db")["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert not Path(e["GRAFT_DB_DIR"]).is_relative_to(cfg.data_mount_path)
    assert one(objs, "Deployment", "graft-admin")["spec"]["strategy"] == {"type": "Recreate"}


def test_the_job_template_has_the_shape_of_the_admins_jobs() -> None:
    from kubernetes import client

    from admin.cluster import KubeConfig
    from admin.runners.base import TrainRequest
    from admin.runners.kube_jobs import build_job

    cfg = KubeConfig()
    d = cfg.data_mount_path
    built = client.ApiClient().sanitize_for_serialization(build_job(TrainRequest("j", d / "m.json", d / "r"), cfg))
    manual = train_job()
    for key in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished", "podFailurePolicy"):
        assert manual["spec"][key] == built["spec"][key], key
    a, b = pod_spec(manual), pod_spec(built)
    for key in ("restartPolicy", "automountServiceAccountToken", "securityContext", "tolerations"):
        assert a[key] == b[key], key
    ca, cb = a["containers"][0], b["containers"][0]
    assert ca["securityContext"] == cb["securityContext"] and ca["resources"] == cb["resources"]
    assert [v for v in a["volumes"] if v["name"] != "model-store"] == b["volumes"]


# ------------------------------------------------------------------ KServe


def test_kserve_layout_and_inference_service() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    props = dict(
        line.split("=", 1)
        for line in (DEPLOY / "kserve/config/config.properties").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert props["model_store"] == "/mnt/models/model-store" and props["inference_address"].endswith(":8085")
    # Management never shares the exposed address (tokens are off); no pip runs when a pod starts.
    assert props["management_address"].startswith("http://127.0.0.1:")
    assert props["management_address"] != props["inference_address"]
    assert props["install_py_dep_per_model"] == "false"
    reqs = [r for r in (DEPLOY / "kserve/requirements.txt").read_text().splitlines() if r and not r.startswith("#")]
    assert reqs and all("==" in r for r in reqs), "the runtime image's extras are pinned"
    snapshot = json.loads(props["model_snapshot"])
    assert snapshot["modelCount"] == len(snapshot["models"]) >= 1
    for name, versions in snapshot["models"].items():
        assert sum(v.get("defaultVersion", False) for v in versions.values()) == 1
        assert all(v["marName"] == f"{name}-{ver}.mar" for ver, v in versions.items())
    assert (DEPLOY / "kserve/model-store").is_dir()

    isvc = yaml.safe_load((DEPLOY / "kserve/inferenceservice.yaml").read_text())
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert isinstance(predictor["canaryTrafficPercent"], int) and 0 <= predictor["canaryTrafficPercent"] <= 100
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    model = predictor["model"]
    runtime = yaml.safe_load((DEPLOY / "kserve/servingruntime.yaml").read_text())
    assert model["runtime"] == runtime["metadata"]["name"] and runtime["kind"] == "ServingRuntime"
    assert "--ts-config=/mnt/models/config/config.properties" in runtime["spec"]["containers"][0]["args"]
    policy = yaml.safe_load((DEPLOY / "kserve/networkpolicy.yaml").read_text())
    kv.validate(policy, kv.utils.latest_version(), strict=True)
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector == {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
    assert model["modelFormat"] == {"name": "pytorch"} and model["protocolVersion"] in ("v1", "v2")
    assert model["storageUri"].split("://")[0] in ("pvc", "s3", "gs", "https", "hdfs", "oci")
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # The predictor's pod-level and container-level fields are core types: validate them as a Pod.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kserve-predictor"},
        "spec": {
            "tolerations": predictor["tolerations"],
            "containers": [{"name": "kserve-container", "image": "x", "resources": model["resources"]}],
        },
    }
    kv.validate(pod, kv.utils.latest_version(), strict=True)
