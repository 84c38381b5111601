"""Regenerate the vendored custom-resource schemas from the projects' published API models (see SOURCES.md).

Kubeflow Trainer, the Training Operator and KServe generate both their CRDs' ``openAPIV3Schema`` and their
Python SDK models from the same Go types. The CRD YAML files are 0.5 to several MB (mostly descriptions and
inlined copies of core Kubernetes types), so the schemas kept here are written from the SDK models in the
same structural-schema form, with the differences SOURCES.md lists: no descriptions, and every core
Kubernetes type (``V1Container``, ``IoK8sApiCoreV1Volume``...) as ``x-graft-k8s-definition: <name>``, which
tests/deploy/crd_schema.py resolves against Kubernetes' own OpenAPI definitions (kubernetes-validate).

Run with the SDK wheels importable (they are not graft dependencies)::

    pip download --no-deps -d /tmp/w kubeflow-trainer-api==2.3.0 kubeflow-training==1.9.4  # + unzip them
    PYTHONPATH=/tmp/w/trainer:/tmp/w/training python deploy/kubeflow/schemas/generate.py
"""

from __future__ import annotations

import datetime
import importlib
import inspect
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KSERVE_OUT = HERE.parents[1] / "kserve" / "schemas"
K8S_PREFIXES = {  # openapi-generator / pydantic class-name prefixes of core Kubernetes types
    "IoK8sApimachineryPkgApisMetaV1": "io.k8s.apimachinery.pkg.apis.meta.v1.",
    "IoK8sApiCoreV1": "io.k8s.api.core.v1.",
    "IoK8sApiBatchV1": "io.k8s.api.batch.v1.",
    "K8sIoApiAppsV1": "io.k8s.api.apps.v1.",
    "K8sIoApiAutoscalingV2": "io.k8s.api.autoscaling.v2.",
    "V1": "io.k8s.api.core.v1.",  # the kubernetes client's names in the kserve and training SDKs
}
META_V1 = {"ObjectMeta", "LabelSelector", "Time", "Duration", "Condition"}
SCALARS = {"str": "string", "int": "integer", "bool": "boolean", "float": "number", "object": "object"}
QUANTITY = {"x-kubernetes-int-or-string": True}


def k8s_definition(name: str, own_prefix: str) -> str | None:
    """The Kubernetes OpenAPI definition for an SDK class name, or None for one of the project's own types."""
    if name.startswith(own_prefix):
        return None
    for prefix, group in K8S_PREFIXES.items():
        if name.startswith(prefix) and name[len(prefix) :][:1].isupper():
            kind = name[len(prefix) :]
            if prefix == "V1" and kind in META_V1:
                return f"io.k8s.apimachinery.pkg.apis.meta.v1.{kind}"
            if prefix == "V1" and kind.startswith("Job"):
                return f"io.k8s.api.batch.v1.{kind}"
            return group + kind
    return None


class OpenApiModels:
    """openapi-generator models (kserve, kubeflow-training): ``openapi_types`` and ``attribute_map``."""

    def __init__(self, module: str, own_prefix: str) -> None:
        self.module = importlib.import_module(module)
        self.own_prefix = own_prefix

    def schema(self, type_name: str) -> dict[str, Any]:
        if m := re.fullmatch(r"list\[(.+)\]", type_name):
            return {"type": "array", "items": self.schema(m.group(1))}
        if m := re.fullmatch(r"dict\(str, (.+)\)", type_name):
            return {"type": "object", "additionalProperties": self.schema(m.group(1))}
        if type_name in SCALARS:
            return {"type": SCALARS[type_name]}
        if type_name == "datetime":
            return {"type": "string", "format": "date-time"}
        if type_name.endswith("Quantity"):  # resource.Quantity and kserve's MetricQuantity
            return dict(QUANTITY)
        if ref := k8s_definition(type_name, self.own_prefix):
            return {"x-graft-k8s-definition": ref}
        cls = getattr(self.module, type_name, None)
        if cls is None:  # referenced by the SDK but not generated in it: kept open, and said so
            print(f"  {type_name}: no model in {self.module.__name__}; an open object", file=sys.stderr)
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "x-graft-unresolved": type_name}
        source = inspect.getsource(cls)
        required = set(re.findall(r"Invalid value for `(\w+)`, must not be `None`", source))
        props = {cls.attribute_map[a]: self.schema(t) for a, t in sorted(cls.openapi_types.items())}
        out: dict[str, Any] = {"type": "object", "properties": props}
        if required:
            out["required"] = sorted(cls.attribute_map[a] for a in required)
        return out


class PydanticModels:
    """kubeflow-trainer-api's pydantic models: fields with aliases and annotations."""

    own_prefix = "TrainerV1alpha1"

    def schema(self, annotation: Any) -> dict[str, Any]:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin in (typing.Union, types.UnionType):
            (inner,) = [a for a in args if a is not type(None)]
            return self.schema(inner)
        if origin is list:
            return {"type": "array", "items": self.schema(args[0])}
        if origin is dict:
            if args[1] is Any:
                return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
            return {"type": "object", "additionalProperties": self.schema(args[1])}
        if origin is typing.Annotated:
            return self.schema(args[0])
        if annotation in (str, bool, int, float):
            return {"type": SCALARS[annotation.__name__]}
        if annotation is datetime.datetime:
            return {"type": "string", "format": "date-time"}
        name = annotation.__name__
        if ref := k8s_definition(name, "TrainerV1alpha1Jobset"):
            return {"x-graft-k8s-definition": ref}
        props, required = {}, []
        for field_name, field in annotation.model_fields.items():
            key = field.alias or field_name
            props[key] = self.schema(field.annotation)
            if field.is_required():
                required.append(key)
        out: dict[str, Any] = {"type": "object", "properties": dict(sorted(props.items()))}
        if required:
            out["required"] = sorted(required)
        return out


def resource(api_version: str, kind: str, spec: dict[str, Any], status: bool = True) -> dict[str, Any]:
    """A CRD's top level: apiVersion, kind, metadata (ObjectMeta, validated by the API server), spec, status."""
    props: dict[str, Any] = {
        "apiVersion": {"type": "string", "enum": [api_version]},
        "kind": {"type": "string", "enum": [kind]},
        "metadata": {"type": "object", "x-graft-k8s-definition": "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
        "spec": spec,
    }
    if status:  # written by the controllers, never by graft: kept open
        props["status"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {"type": "object", "properties": props, "required": ["apiVersion", "kind"]}


def write(path: Path, source: str, schema: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"x-graft-source": source, "openAPIV3Schema": schema}
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    print(f"wrote {path.relative_to(HERE.parents[2])} ({path.stat().st_size} bytes)")


def trainer() -> None:
    models = importlib.import_module("kubeflow_trainer_api.models")
    gen = PydanticModels()
    tj = resource("trainer.kubeflow.org/v1alpha1", "TrainJob", gen.schema(models.TrainerV1alpha1TrainJobSpec))
    apply_trainjob_crd_constraints(tj)
    write(HERE / "trainjob.v1alpha1.json", "kubeflow-trainer-api 2.3.0 (TrainerV1alpha1TrainJobSpec)", tj)
    spec = gen.schema(models.TrainerV1alpha1TrainingRuntimeSpec)
    ctr = resource("trainer.kubeflow.org/v1alpha1", "ClusterTrainingRuntime", spec, status=False)
    apply_runtime_crd_constraints(ctr)
    write(HERE / "clustertrainingruntime.v1alpha1.json",
          "kubeflow-trainer-api 2.3.0 (TrainerV1alpha1TrainingRuntimeSpec)", ctr)  # fmt: skip


def apply_trainjob_crd_constraints(tj: dict[str, Any]) -> None:
    """The constraints of trainer.kubeflow.org_trainjobs.yaml (SOURCES.md) that the SDK models do not carry."""
    spec = tj["properties"]["spec"]
    spec["required"] = ["runtimeRef"]
    p = spec["properties"]
    p["activeDeadlineSeconds"].update(minimum=1)
    p["managedBy"].update(maxLength=253, enum=["trainer.kubeflow.org/trainjob-controller", "kueue.x-k8s.io/multikueue"])
    p["runtimePatches"].update(maxItems=16)
    p["runtimePatches"]["items"]["properties"]["manager"].update(minLength=1, maxLength=253)
    for key in ("apiGroup", "kind"):
        p["runtimeRef"]["properties"][key].update(maxLength=253)
    p["runtimeRef"]["properties"]["name"].update(minLength=1, maxLength=253)
    t = p["trainer"]["properties"]
    for key in ("args", "command"):
        t[key].update(maxItems=128)
        t[key]["items"].update(maxLength=65536)
    t["env"].update(maxItems=128)
    t["image"].update(maxLength=500)
    # The CRD's x-kubernetes-validations on metadata.name (CEL), as JSON Schema.
    tj["properties"]["metadata"] = {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "maxLength": 63, "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$"}},
        "x-graft-k8s-definition": "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}  # fmt: skip


def apply_runtime_crd_constraints(ctr: dict[str, Any]) -> None:
    """What trainer.kubeflow.org_clustertrainingruntimes.yaml (SOURCES.md) says beyond the SDK models."""
    spec = ctr["properties"]["spec"]
    spec.update(minProperties=1)
    ml = spec["properties"]["mlPolicy"]["properties"]
    targets = ml["torch"]["properties"]["envInjection"]["properties"]["targets"]
    targets.update(maxItems=16)
    targets["items"]["required"] = ["jobName"]  # the models also require containerNames; the CRD does not
    targets["items"]["properties"]["jobName"].update(minLength=1, maxLength=253)
    targets["items"]["properties"]["containerNames"].update(minItems=1, maxItems=8)
    targets["items"]["properties"]["containerNames"]["items"].update(maxLength=63)
    ml["mpi"]["properties"]["mpiImplementation"].update(enum=["OpenMPI", ""])
    ml["mpi"]["properties"]["sshAuthMountPath"].update(maxLength=4096)
    ml["flux"]["properties"]["numProcPerNode"].update(minimum=1)  # a CEL rule there
    volcano = spec["properties"]["podGroupPolicy"]["properties"]["volcano"]["properties"]
    volcano["networkTopology"]["properties"]["mode"].update(enum=["hard", "soft"])
    template = spec["properties"]["template"]
    template.update(minProperties=1)
    failure = template["properties"]["spec"]["properties"]["failurePolicy"]["properties"]
    failure["restartStrategy"].update(enum=["Recreate", "BlockingRecreate", "InPlaceRestart"])
    failure["rules"]["items"]["properties"]["action"].update(
        enum=["FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts"]
    )


def training_operator() -> None:
    gen = OpenApiModels("kubeflow.training.models", "KubeflowOrgV1")
    spec = gen.schema("KubeflowOrgV1PyTorchJobSpec")
    spec["required"] = ["pytorchReplicaSpecs"]  # kubeflow.org_pytorchjobs.yaml (SOURCES.md); the SDK does not say
    write(HERE / "pytorchjob.v1.json", "kubeflow-training 1.9.4 (KubeflowOrgV1PyTorchJobSpec)",
          resource("kubeflow.org/v1", "PyTorchJob", spec))  # fmt: skip


def kserve() -> None:
    gen = OpenApiModels("kserve.models", "V1beta1")
    isvc = resource("serving.kserve.io/v1beta1", "InferenceService", gen.schema("V1beta1InferenceServiceSpec"))
    write(KSERVE_OUT / "inferenceservice.v1beta1.json", "kserve 0.21.0 (V1beta1InferenceServiceSpec)", isvc)
    gen = OpenApiModels("kserve.models", "V1alpha1")
    sr = resource("serving.kserve.io/v1alpha1", "ServingRuntime", gen.schema("V1alpha1ServingRuntimeSpec"))
    write(KSERVE_OUT / "servingruntime.v1alpha1.json", "kserve 0.21.0 (V1alpha1ServingRuntimeSpec)", sr)


if __name__ == "__main__":
    for step in sys.argv[1:] or ["trainer", "training_operator", "kserve"]:
        globals()[step]()
