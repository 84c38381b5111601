"""The trainjob and pytorchjob overlays, the example ClusterTrainingRuntime, and the resources the admin's
runners build, checked against the CRD schemas of Kubeflow Trainer v2.3.0 and Training Operator release-1.9
kept in deploy/kubeflow/schemas/ (SOURCES.md), strictly (tests/deploy/crd_schema.py: unknown fields refused,
embedded pods and containers checked against Kubernetes' own definitions). No cluster, no operator."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from admin.runners.base import TrainRequest
from admin.runners.pytorchjob import build_pytorchjob
from admin.runners.trainjob import TrainerConfig, build_trainjob
from tests.deploy.crd_schema import check
from tests.deploy.test_manifests import DEPLOY, container, env, kustomize_cmd, one, validate_all

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("kubernetes_validate")

RUNTIME = DEPLOY / "kubeflow" / "clustertrainingruntime.yaml"
RESOURCE = {"trainjob": ("trainer.kubeflow.org", "trainjobs"), "pytorchjob": ("kubeflow.org", "pytorchjobs")}


def render(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run([*kustomize_cmd(), str(DEPLOY / "overlays" / overlay)],
                         capture_output=True, text=True, check=False, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.parametrize("runner", ["trainjob", "pytorchjob"])
def test_overlay_renders_valid_objects_with_the_runners_rbac(runner: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objs = render(runner)
    validate_all(objs)
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    group, plural = RESOURCE[runner]
    role = one(objs, "Role", f"graft-admin-{runner}")
    verbs = ["create", "get", "list", "delete"]
    assert role["rules"] == [{"apiGroups": [group], "resources": [plural], "verbs": verbs}]
    binding = one(objs, "RoleBinding", f"graft-admin-{runner}")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "graft-admin", "namespace": "graft"}]
    peers = one(objs, "NetworkPolicy", "graft-training-peers")
    training = {"app.kubernetes.io/name": "graft", "app.kubernetes.io/component": "training"}
    assert peers["spec"]["podSelector"]["matchLabels"] == training
    assert peers["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": training}}]}]
    # the admin's settings accept what the manifests set, and name the example runtime
    admin = container(one(objs, "Deployment", "graft-admin"), "admin")
    names = [e["name"] for e in admin["env"]]
    assert names.count("GRAFT_RUNNER") == 1
    e = {k: v for k, v in env(admin).items() if isinstance(v, str)}
    assert e["GRAFT_RUNNER"] == runner
    known = {f"GRAFT_KUBE_{f.upper()}" for f in TrainerConfig.model_fields}
    unknown = {k for k in e if k.startswith("GRAFT_KUBE_")} - known
    assert not unknown
    for k, v in e.items():
        monkeypatch.setenv(k, v)
    cfg = TrainerConfig()
    if runner == "trainjob":
        assert cfg.trainjob_runtime == yaml.safe_load(RUNTIME.read_text())["metadata"]["name"]
    from admin.settings import AdminSettings

    assert AdminSettings(runner=e["GRAFT_RUNNER"]).runner == runner


def _cfg(tmp_path: Path, **kw: Any) -> TrainerConfig:
    return TrainerConfig(data_mount_path=Path("/var/lib/graft"), num_nodes=2, gpu_count=8, queue_name="team-a", **kw)


def _request() -> TrainRequest:
    data = Path("/var/lib/graft")
    return TrainRequest("job-42", data / "admin/jobs/job-42/train-config.json", data / "admin/runs/job-42")


def _pod(spec: dict[str, Any], containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {**spec, "containers": containers}}


def _node_patch(tj: dict[str, Any]) -> dict[str, Any]:
    """The pod template the TrainJob's runtimePatches apply to the runtime's node job."""
    job = tj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    patch: dict[str, Any] = job["template"]["spec"]["template"]
    return patch


def test_the_default_patch_api_is_the_published_one() -> None:
    """Trainer v2.3.0's TrainJob has runtimePatches and no podTemplateOverrides (SOURCES.md): the default."""
    assert TrainerConfig.model_fields["trainjob_patch_api"].default == "runtimePatches"
    spec = yaml.safe_load((DEPLOY / "kubeflow/schemas/trainjob.v1alpha1.json").read_text())
    fields = spec["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert "runtimePatches" in fields and "podTemplateOverrides" not in fields


@pytest.mark.parametrize("api", ["runtimePatches", "podTemplateOverrides"])
def test_the_trainjob_the_admin_sends_fits_the_crd(tmp_path: Path, api: str) -> None:
    tj = build_trainjob(_request(), _cfg(tmp_path, trainjob_patch_api=api))
    if api == "podTemplateOverrides":
        # the older releases' field is not in v2.3.0's schema: the schema must say so (this check can fail)
        with pytest.raises(jsonschema.ValidationError, match="podTemplateOverrides"):
            check(tj)
        return
    check(tj)
    assert _node_patch(tj)["spec"]["containers"][0]["name"] == "node"
    pod = _node_patch(tj)["spec"]
    node = {**pod["containers"][0], "image": tj["spec"]["trainer"]["image"], "env": tj["spec"]["trainer"]["env"],
            "resources": tj["spec"]["trainer"]["resourcesPerNode"]}  # fmt: skip
    validate_all([_pod({k: v for k, v in pod.items() if k != "containers"}, [node])])


def _patched_container(t: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = _node_patch(t)["spec"]["containers"][0]
    return c


def test_the_trainjob_schema_is_strict() -> None:
    good = build_trainjob(_request(), _cfg(Path()))
    check(good)
    for mutate, where in [
        (lambda t: t["spec"]["trainer"].update(numProcPerNode="auto"), "'auto' is not of type"),  # v2.3.0: int32
        (lambda t: t["spec"]["runtimeRef"].pop("name"), "name"),
        (lambda t: t["spec"]["trainer"].update(nprocPerNode=2), "nprocPerNode"),
        (lambda t: t["metadata"].update(name="Graft_Train"), "Graft_Train"),
        (lambda t: t["spec"].update(activeDeadlineSeconds=0), "less than the minimum"),
        # a misspelled field of the patch types, and one inside an embedded core type (EnvVar)
        (lambda t: _patched_container(t).update(volumeMount=[]), "volumeMount"),
        (lambda t: _node_patch(t)["spec"].update(hostNetwork=True), "hostNetwork"),  # not patchable in v2.3.0
        (lambda t: t["spec"]["trainer"]["env"].append({"name": "X", "valu": "1"}), "valu"),
    ]:
        bad = copy.deepcopy(good)
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError, match=where):
            check(bad)


def test_the_pytorchjob_the_admin_sends_fits_the_crd(tmp_path: Path) -> None:
    pj = build_pytorchjob(_request(), _cfg(tmp_path))
    check(pj)
    assert set(pj["spec"]["pytorchReplicaSpecs"]) == {"Master", "Worker"}  # the operator's webhook allows these
    for replica in pj["spec"]["pytorchReplicaSpecs"].values():
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
        validate_all([{**template, "template": replica["template"]}])
    for mutate, where in [
        (lambda p: p["spec"].update(pytorchReplicaSpec=p["spec"].pop("pytorchReplicaSpecs")), "pytorchReplicaSpec"),
        (lambda p: p["spec"].update(nprocPerNode=8), "8 is not of type 'string'"),  # a string in the v1 API
        (lambda p: p["spec"]["runPolicy"].update(cleanupPodPolicy="None"), "cleanupPodPolicy"),
        (lambda p: p["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0].update(
            imagePullPolice="Always"), "imagePullPolice"),
    ]:
        bad = copy.deepcopy(pj)
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError, match=where):
            check(bad)


def test_the_example_runtime_fits_the_crd_and_the_restricted_standard() -> None:
    runtime = yaml.safe_load(RUNTIME.read_text())
    check(runtime)
    assert "namespace" not in runtime["metadata"]  # cluster-scoped
    (node,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"  # the job the TrainJob's trainer and runtimePatches address
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, **{"spec": node["template"]["spec"]}}
    validate_all([job])
    (c,) = node["template"]["spec"]["template"]["spec"]["containers"]
    assert c["name"] == "node"
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}  # fmt: skip
    # what this example said before v2.3.0's schema was vendored: the torch policy has no numProcPerNode now
    old = copy.deepcopy(runtime)
    old["spec"]["mlPolicy"]["torch"] = {"numProcPerNode": "auto"}
    with pytest.raises(jsonschema.ValidationError, match="numProcPerNode"):
        check(old)
    bad = copy.deepcopy(runtime)
    bad["spec"]["template"]["spec"]["replicatedJobs"][0]["replicas"] = "1"
    with pytest.raises(jsonschema.ValidationError, match="'1'"):
        check(bad)
