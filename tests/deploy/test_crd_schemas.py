"""Every custom resource in deploy/ against the CRD schemas vendored in deploy/kubeflow/schemas and
deploy/kserve/schemas (tests/deploy/crd_schema.py), and the converter's rules, each shown to refuse."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.crd_schema import DEPLOY, SCHEMAS, check, load, schema_for, to_json_schema

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("kubernetes_validate")


def _custom_resources() -> list[tuple[str, int, dict[str, Any]]]:
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            group = str(doc.get("apiVersion", "")).split("/")[0] if isinstance(doc, dict) else ""
            # a custom resource: a group that is not Kubernetes' own (*.k8s.io, or the core group "v1")
            if "." in group and not group.endswith("k8s.io"):
                found.append((str(path.relative_to(DEPLOY)), i, doc))
    return found


ALL_CUSTOM = _custom_resources()


# Checked elsewhere: the PrometheusRule against prometheus-operator's CRD schema in deploy/monitoring/schemas
# (tests/deploy/test_monitoring.py); the PodMonitors only structurally and by the pods they select there
# (their CRD schema is not vendored yet).
ELSEWHERE = {("monitoring.coreos.com/v1", "PrometheusRule"), ("monitoring.coreos.com/v1", "PodMonitor")}


CUSTOM = [c for c in ALL_CUSTOM if (c[2]["apiVersion"], c[2]["kind"]) not in ELSEWHERE]


def test_every_custom_resource_in_deploy_has_a_vendored_schema() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for _, _, d in CUSTOM}
    assert kinds <= set(SCHEMAS), "a new custom resource kind needs its CRD schema vendored (SOURCES.md)"
    assert ("serving.kserve.io/v1beta1", "InferenceService") in kinds
    assert ("trainer.kubeflow.org/v1alpha1", "ClusterTrainingRuntime") in kinds


@pytest.mark.parametrize("where,index,doc", CUSTOM, ids=[f"{w}#{i}" for w, i, _ in CUSTOM])
def test_custom_resources_fit_their_crd(where: str, index: int, doc: dict[str, Any]) -> None:
    assert schema_for(doc) is not None, where
    check(doc)


def test_unknown_fields_are_refused_as_kubectl_validate_strict_does() -> None:
    node = {"type": "object", "properties": {"a": {"type": "string"}}}
    v = jsonschema.Draft202012Validator(to_json_schema(node))
    assert v.is_valid({"a": "x"}) and not v.is_valid({"b": "x"}) and not v.is_valid({"a": 1})
    open_node = {**node, "x-kubernetes-preserve-unknown-fields": True}
    assert jsonschema.Draft202012Validator(to_json_schema(open_node)).is_valid({"b": "x"})
    mapping = {"type": "object", "additionalProperties": {"type": "string"}}
    v = jsonschema.Draft202012Validator(to_json_schema(mapping))
    assert v.is_valid({"any": "x"}) and not v.is_valid({"any": 1})
    # an object with no declared fields keeps none (the API server would prune them all)
    assert not jsonschema.Draft202012Validator(to_json_schema({"type": "object"})).is_valid({"b": 1})


def test_int_or_string() -> None:
    node = {"x-kubernetes-int-or-string": True, "pattern": "^[0-9]+Gi$"}
    v = jsonschema.Draft202012Validator(to_json_schema(node))
    assert v.is_valid(4) and v.is_valid("4Gi") and not v.is_valid("4 gigs") and not v.is_valid(4.5)


def test_embedded_core_types_are_checked_strictly() -> None:
    """x-graft-k8s-definition resolves to Kubernetes' strict definitions: a misspelled container field fails."""
    isvc = yaml.safe_load((DEPLOY / "kserve/graft-runtime/inferenceservice.yaml").read_text())
    check(isvc)
    bad = copy.deepcopy(isvc)
    bad["spec"]["predictor"]["containers"][0]["volumeMount"] = []
    with pytest.raises(jsonschema.ValidationError, match="volumeMount"):
        check(bad)


@pytest.mark.parametrize("path", sorted(set(SCHEMAS.values())), ids=lambda p: Path(p).name)
def test_vendored_schemas_are_structural(path: Path) -> None:
    """Each file is an openAPIV3Schema of an object with apiVersion, kind, metadata and spec."""
    schema = load(path)
    assert schema["type"] == "object"
    assert {"apiVersion", "kind", "metadata", "spec"} <= set(schema["properties"])
    jsonschema.Draft202012Validator.check_schema(to_json_schema(schema))
