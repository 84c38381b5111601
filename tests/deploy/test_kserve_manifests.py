"""The KServe runtime's manifests: graft's own container as an InferenceService predictor, and the Deployment
overlay for clusters without KServe. Core types are validated strictly (kubernetes-validate); the
InferenceService and ServingRuntime against KServe 0.21's CRD schemas vendored in deploy/kserve/schemas
(SOURCES.md), strictly (tests/deploy/crd_schema.py), and their predictor's pod fields as a core Pod too."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.deploy.crd_schema import check
from tests.deploy.test_manifests import DEPLOY, container, kustomize_cmd, one, pod_spec, validate_all

RESTRICTED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
              "capabilities": {"drop": ["ALL"]}}  # fmt: skip


def _overlay() -> list[dict[str, Any]]:
    out = subprocess.run([*kustomize_cmd(), str(DEPLOY / "overlays/kserve-runtime")], capture_output=True, text=True,
                         check=False, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_the_deployment_overlay_runs_the_kserve_runtime() -> None:
    objs = _overlay()
    validate_all(objs)
    dep = one(objs, "Deployment", "graft-inference")
    c = container(dep, "torchserve")
    assert c["command"] == ["/usr/bin/tini", "--", "python", "-m", "graft.kserve.server"]
    args = dict(a.split("=", 1) for a in c["args"] if "=" in a)
    assert args["--model-store"] == "/models" and args["--http-port"] == "8080" and args["--grpc-port"] == "8081"
    # Its work folder is on the pod's scratch volume (the root file system is read-only).
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert args["--workdir"].startswith("/run/graft/") and "/run/graft" in mounts
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "exec" not in c[probe] and c[probe]["httpGet"]["port"] == 8080, probe
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert {p["containerPort"] for p in c["ports"]} >= {8080, 8081}
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    assert c["securityContext"] == c["securityContext"] | RESTRICTED
    svc = one(objs, "Service", "graft-inference")
    assert {(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {(8080, "inference"), (8081, "grpc")}
    policy = one(objs, "NetworkPolicy", "graft-inference")
    assert [sorted(p["port"] for p in rule["ports"]) for rule in policy["spec"]["ingress"]] == [[8080, 8081]]
    env = {e["name"] for e in c["env"]}
    assert {"GRAFT_DEFAULT_VERSIONS", "GRAFT_CAPTURE_RATE", "GRAFT_CAPTURE_DIR"} <= env


def test_the_inference_service_runs_graft_s_own_container() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    isvc = yaml.safe_load((DEPLOY / "kserve/graft-runtime/inferenceservice.yaml").read_text())
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    check(isvc)
    predictor = isvc["spec"]["predictor"]
    assert "model" not in predictor, "a custom container predictor: no ServingRuntime, no TorchServe"
    (c,) = predictor["containers"]
    assert c["name"] == "kserve-container" and c["command"][-2:] == ["-m", "graft.kserve.server"]
    args = dict(a.split("=", 1) for a in c["args"])
    assert args["--http-port"] == "8080" and [p["containerPort"] for p in c["ports"]] == [8080]
    assert args["--model-store"] == next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "model-store")
    assert c["securityContext"] == c["securityContext"] | RESTRICTED
    keys = next(v for v in predictor["volumes"] if v["name"] == "keys")
    key_env = next(e["value"] for e in c["env"] if e["name"] == "GRAFT_KSERVE_KEY_FILE")
    assert key_env.startswith(next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "keys"))
    assert "secret" in keys
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    # The predictor's pod-level and container fields are core types: validate them as a Pod.
    pod_fields = {k: v for k, v in predictor.items() if k not in ("minReplicas", "maxReplicas")}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "graft-kserve-predictor"}, "spec": pod_fields}
    kv.validate(pod, kv.utils.latest_version(), strict=True)
    assert pod_spec({"spec": {"template": {"spec": pod_fields}}})["securityContext"]["runAsNonRoot"] is True


def _predictor(doc: dict[str, Any]) -> dict[str, Any]:
    p: dict[str, Any] = doc["spec"]["predictor"]
    return p


MISTAKES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("graft-runtime/inferenceservice.yaml", lambda d: _predictor(d).update(minReplica=1), "minReplica"),
    ("graft-runtime/inferenceservice.yaml", lambda d: _predictor(d).update(maxReplicas="4"), "'4' is not of type"),
    ("graft-runtime/inferenceservice.yaml", lambda d: d["spec"].update(predictors=d["spec"].pop("predictor")),
     "predictors"),
    ("inferenceservice.yaml", lambda d: _predictor(d)["model"].update(storageURI="pvc://x"), "storageURI"),
    ("inferenceservice.yaml", lambda d: _predictor(d).update(canaryTrafficPercent="10%"), "'10%' is not of type"),
    ("servingruntime.yaml", lambda d: d["spec"].update(supportedModelFormat=[]), "supportedModelFormat"),
    ("servingruntime.yaml", lambda d: d["spec"]["containers"][0].update(arg=[]), "arg"),
]  # fmt: skip


@pytest.mark.parametrize("where,mutate,match", MISTAKES, ids=[f"{w}:{m}" for w, _, m in MISTAKES])
def test_the_kserve_schemas_refuse_a_misspelled_field_or_a_wrong_type(
    where: str, mutate: Callable[[dict[str, Any]], None], match: str
) -> None:
    pytest.importorskip("kubernetes_validate")
    jsonschema = pytest.importorskip("jsonschema")
    good = yaml.safe_load((DEPLOY / "kserve" / where).read_text())
    check(good)
    bad = copy.deepcopy(good)
    mutate(bad)
    with pytest.raises(jsonschema.ValidationError, match=match):
        check(bad)
