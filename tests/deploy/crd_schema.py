"""A CRD's ``openAPIV3Schema`` (a Kubernetes structural schema) as a JSON Schema validator.

The API server prunes fields a structural schema does not declare, silently: a misspelled field in a
manifest is dropped, not refused. ``kubectl --validate=strict`` (server-side field validation ``Strict``)
refuses such an object instead, and that is what these tests do, so a typo fails here rather than vanishing
on a cluster. The rules:

- an object with ``properties`` takes no other field (``additionalProperties: false``), unless it says
  ``x-kubernetes-preserve-unknown-fields: true``; an object with ``additionalProperties`` is a map of them;
- ``x-kubernetes-int-or-string: true`` accepts an integer or a string (then ``pattern`` applies);
- ``x-graft-k8s-definition: NAME`` (the vendored files' stand-in for an embedded core type, see
  deploy/kubeflow/schemas/SOURCES.md) is Kubernetes' own definition NAME from kubernetes-validate's strict
  schemas for the version asked, so embedded pods, containers and volumes are checked as strictly as the
  core objects in tests/deploy/test_manifests.py;
- ``type``, ``enum``, ``required``, ``items``, lengths, bounds and ``pattern`` carry over as they are;
  descriptions, defaults and CEL rules (``x-kubernetes-validations``) are not checked.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

# jsonschema, referencing and kubernetes-validate (the dev extra) are imported where used, so a test module
# that imports this one can still skip cleanly without them.

K8S_URI = "urn:graft:kubernetes-definitions"
_COPIED = ("type", "enum", "required", "format", "minimum", "maximum", "minLength", "maxLength", "pattern",
           "minItems", "maxItems", "minProperties", "maxProperties")  # fmt: skip


def to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """One openAPIV3Schema node (and everything under it) as JSON Schema (draft 2020-12)."""
    out: dict[str, Any] = {k: node[k] for k in _COPIED if k in node}
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if "properties" in node:
        out["properties"] = {k: to_json_schema(v) for k, v in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(node["additionalProperties"])
    elif out.get("type") == "object" and not node.get("x-kubernetes-preserve-unknown-fields"):
        # declared fields only: what the API server would prune, strict validation refuses
        if "properties" in out:
            out["additionalProperties"] = False
        elif "x-graft-k8s-definition" not in node:
            out["maxProperties"] = 0
    if "items" in node:
        out["items"] = to_json_schema(node["items"])
    if ref := node.get("x-graft-k8s-definition"):
        core = {"$ref": f"{K8S_URI}#/$defs/{ref}"}
        if "properties" in out:  # graft's extra rules on top of the core type (TrainJob's metadata.name)
            out.pop("additionalProperties", None)
            return {"allOf": [core, out]}
        return core
    return out


def _k8s_dir(version: str) -> Any:
    """kubernetes-validate's strict schemas for ``version`` ("1.31.0"): the newest it has that is not newer."""
    import kubernetes_validate.utils as kvu

    base = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    wanted = kvu.major_minor(version)
    chosen = [v for v in kvu.all_versions() if kvu.major_minor(v) <= wanted][-1]
    return base / f"v{chosen}-local-strict"


@functools.cache
def _registry(version: str) -> Any:
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    defs = json.loads((_k8s_dir(version) / "_definitions.json").read_text())
    return Registry().with_resource(K8S_URI, Resource.from_contents(defs, default_specification=DRAFT202012))


@functools.cache
def load(path: Path) -> dict[str, Any]:
    """The vendored file's openAPIV3Schema."""
    doc: dict[str, Any] = json.loads(Path(path).read_text())
    schema: dict[str, Any] = doc["openAPIV3Schema"]
    return schema


@functools.cache
def validator(path: Path, version: str) -> Any:
    import jsonschema

    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **to_json_schema(load(path))}
    cls = jsonschema.validators.Draft202012Validator
    cls.check_schema(schema)
    return cls(schema, registry=_registry(version))


def validate(obj: dict[str, Any], path: Path, versions: tuple[str, ...]) -> None:
    """Raise jsonschema.ValidationError (the deepest, most telling one) if ``obj`` does not fit."""
    import jsonschema

    for version in versions:
        error = jsonschema.exceptions.best_match(validator(path, version).iter_errors(obj))
        if error is not None:
            raise error


DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# (apiVersion, kind) -> the vendored schema (deploy/*/schemas/SOURCES.md says where each came from)
SCHEMAS = {
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): DEPLOY / "kubeflow/schemas/trainjob.v1alpha1.json",
    ("trainer.kubeflow.org/v1alpha1", "ClusterTrainingRuntime"):
        DEPLOY / "kubeflow/schemas/clustertrainingruntime.v1alpha1.json",
    ("kubeflow.org/v1", "PyTorchJob"): DEPLOY / "kubeflow/schemas/pytorchjob.v1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): DEPLOY / "kserve/schemas/inferenceservice.v1beta1.json",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): DEPLOY / "kserve/schemas/servingruntime.v1alpha1.json",
}  # fmt: skip


def schema_for(obj: dict[str, Any]) -> Path | None:
    return SCHEMAS.get((str(obj.get("apiVersion")), str(obj.get("kind"))))


def k8s_versions() -> tuple[str, ...]:
    """The Kubernetes versions whose core definitions embedded types are checked against (as test_manifests)."""
    import kubernetes_validate.utils as kvu

    return ("1.31.0", kvu.latest_version())


def check(obj: dict[str, Any]) -> None:
    """Validate a custom resource against its vendored CRD schema; a kind without one is an error."""
    path = schema_for(obj)
    assert path is not None, f"no vendored schema for {obj.get('apiVersion')} {obj.get('kind')}"
    validate(obj, path, k8s_versions())
