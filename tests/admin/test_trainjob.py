"""The TrainJob and PyTorchJob runners and CRD discovery, driven through the real ``kubernetes`` client.

No cluster (nor Kubeflow Trainer, nor the Training Operator) can run here: the API server is faked at the
HTTP transport (tests/support/fake_kube.py, extended below with the two custom resources and discovery),
as for the Job runner. What is checked: the exact resource sent, its environment, how its conditions are
read back (Kueue's suspension included), cancel, a restarted admin finding its jobs, and a missing CRD.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from admin.runners.base import TrainRequest
from admin.runners.custom_jobs import CustomJobRunner
from admin.runners.discovery import available_runners, require_kind
from admin.runners.pytorchjob import PYTORCHJOB
from admin.runners.trainjob import TRAINJOB, TrainerConfig
from graft.core.errors import ClusterError, ConfigError, ConflictError, UserInputError
from tests.support.fake_kube import FakeKube, FakeServer, api_client, status_body

_OBJECTS = re.compile(r"^/apis/([^/]+)/([^/]+)/namespaces/([^/]+)/([^/]+)(?:/([^/]+))?$")
_GROUP_VERSION = re.compile(r"^/apis/([^/]+)/([^/]+)$")


@dataclass
class FakeOperators(FakeKube):
    """FakeKube plus custom objects of the served CRDs (group/version -> plurals) and their discovery."""

    served: dict[str, list[str]] = field(default_factory=dict)
    objects: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # plural -> name -> object

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if method in self.forbid:
            return 403, status_body(403, "Forbidden", "trainjobs.trainer.kubeflow.org is forbidden")
        if (m := _GROUP_VERSION.match(path)) and method == "GET":
            gv = f"{m.group(1)}/{m.group(2)}"
            if gv not in self.served:
                return 404, status_body(404, "NotFound", "the server could not find the requested resource")
            resources = [{"name": p, "namespaced": True, "kind": p, "verbs": ["create", "get", "delete"],
                          "singularName": ""} for p in self.served[gv]]  # fmt: skip
            return 200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}
        m = _OBJECTS.match(path)
        if m is None or f"{m.group(1)}/{m.group(2)}" not in self.served:
            return super().handle(method, path, query, body)
        plural, name = m.group(4), m.group(5)
        store = self.objects.setdefault(plural, {})
        if method == "POST" and name is None:
            name = body["metadata"]["name"]
            if name in store:
                return 409, status_body(409, "AlreadyExists", f"{plural} {name!r} already exists")
            store[name] = {**copy.deepcopy(body), "status": {}}
            store[name]["metadata"]["namespace"] = m.group(3)
            return 201, store[name]
        if name not in store:
            return 404, status_body(404, "NotFound", f"{plural} {name!r} not found")
        if method == "GET":
            return 200, store[name]
        if method == "DELETE":
            del store[name]
            return 200, status_body(200, "Success", "")
        return 405, status_body(405, "MethodNotAllowed", method)


TRAINER = {"trainer.kubeflow.org/v1alpha1": ["trainjobs", "trainjobs/status"]}
OPERATOR = {"kubeflow.org/v1": ["pytorchjobs", "tfjobs"]}


@pytest.fixture
def fake() -> FakeOperators:
    return FakeOperators(served={**TRAINER, **OPERATOR})


@pytest.fixture
def api(fake: FakeOperators) -> Iterator[client.ApiClient]:
    with FakeServer(fake) as url, api_client(url) as c:
        yield c


@pytest.fixture
def cfg(tmp_path: Path) -> TrainerConfig:
    return TrainerConfig(namespace="graft", image="registry.example/graft:1.0-gpu", data_mount_path=tmp_path / "data",
                         num_nodes=2, gpu_count=4, queue_name="team-a")  # fmt: skip


def request(cfg: TrainerConfig, job_id: str = "job-42") -> TrainRequest:
    data = cfg.data_mount_path
    inputs = (data / "admin/manifests/m.json",)
    return TrainRequest(job_id, data / f"admin/jobs/{job_id}/train-config.json", data / f"admin/runs/{job_id}",
                        inputs)  # fmt: skip


def test_trainjob_sent(fake: FakeOperators, api: client.ApiClient, cfg: TrainerConfig) -> None:
    req = request(cfg)
    CustomJobRunner(api, cfg, TRAINJOB).submit(req)
    (post,) = fake.calls("POST")
    assert post.path == "/apis/trainer.kubeflow.org/v1alpha1/namespaces/graft/trainjobs"
    tj = post.body
    assert (tj["apiVersion"], tj["kind"], tj["metadata"]["name"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob",
                                                                      "graft-train-job-42")  # fmt: skip
    assert tj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert tj["metadata"]["annotations"]["graft.io/output-dir"] == str(req.output_dir)
    spec = tj["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                  "name": "torch-distributed"}  # fmt: skip
    trainer = spec["trainer"]
    # torchrun takes nodes, processes, rank and rendezvous from the PET_* variables the runtime injects
    assert trainer["command"] == ["torchrun", "-m", "graft.cli"]
    assert trainer["args"] == ["train", "--config", str(req.config_file)]
    assert not any(a.startswith("--nnodes") or a.startswith("--nproc") for a in trainer["args"])
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    assert trainer["image"] == "registry.example/graft:1.0-gpu"
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "4", "memory": "16Gi"},
                                           "limits": {"memory": "32Gi", "nvidia.com/gpu": "4"}}  # fmt: skip
    assert {e["name"]: e["value"] for e in trainer["env"]}["GRAFT_JOB_ID"] == "job-42"
    assert spec["activeDeadlineSeconds"] == 21600
    (patch,) = spec["runtimePatches"]
    assert patch["manager"] == "graft.io/admin"
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == "node"
    template = job["template"]["spec"]["template"]
    assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "training"
    pod = template["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["volumes"][0] == {"name": "data", "persistentVolumeClaim": {"claimName": "graft-admin-data"}}
    (node,) = pod["containers"]
    assert node["name"] == "node" and node["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "data", "mountPath": str(cfg.data_mount_path), "readOnly": True} in node["volumeMounts"]
    assert {"name": "data", "mountPath": str(req.output_dir), "subPath": "admin/runs/job-42"} in node["volumeMounts"]
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_older_trainer_gets_pod_template_overrides(
    fake: FakeOperators, api: client.ApiClient, cfg: TrainerConfig
) -> None:
    old = cfg.model_copy(update={"trainjob_patch_api": "podTemplateOverrides"})
    CustomJobRunner(api, old, TRAINJOB).submit(request(old))
    spec = fake.calls("POST")[0].body["spec"]
    assert "runtimePatches" not in spec and "activeDeadlineSeconds" not in spec
    (override,) = spec["podTemplateOverrides"]
    assert override["targetJobs"] == [{"name": "node"}]
    assert override["spec"]["containers"][0]["name"] == "node" and override["metadata"]["labels"]


def test_cpu_processes_and_a_namespaced_runtime(fake: FakeOperators, api: client.ApiClient, cfg: TrainerConfig) -> None:
    shape = {"gpu_count": 0, "num_proc_per_node": 2, "num_nodes": 1, "tolerations": []}
    cpu = cfg.model_copy(update={**shape, "trainjob_runtime": "graft-cpu", "trainjob_runtime_kind": "TrainingRuntime"})
    CustomJobRunner(api, cpu, TRAINJOB).submit(request(cpu))
    spec = fake.calls("POST")[0].body["spec"]
    assert spec["runtimeRef"]["kind"] == "TrainingRuntime" and spec["runtimeRef"]["name"] == "graft-cpu"
    assert (spec["trainer"]["numNodes"], spec["trainer"]["numProcPerNode"]) == (1, 2)
    assert spec["trainer"]["resourcesPerNode"]["limits"] == {"memory": "32Gi"}
    (job,) = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert "tolerations" not in job["template"]["spec"]["template"]["spec"]


def test_paths_outside_the_data_volume_are_refused(api: client.ApiClient, cfg: TrainerConfig, tmp_path: Path) -> None:
    bad = TrainRequest("j", tmp_path / "elsewhere/train-config.json", cfg.data_mount_path / "admin/runs/j")
    with pytest.raises(UserInputError, match="not under the data volume"):
        CustomJobRunner(api, cfg, TRAINJOB).submit(bad)


def test_second_submit_is_a_conflict_and_rbac_refusal_is_typed(
    fake: FakeOperators, api: client.ApiClient, cfg: TrainerConfig
) -> None:
    runner = CustomJobRunner(api, cfg, TRAINJOB)
    runner.submit(request(cfg))
    with pytest.raises(ConflictError, match="already exists"):
        runner.submit(request(cfg))
    fake.forbid.add("POST")
    with pytest.raises(ClusterError, match="403"):
        runner.submit(request(cfg, "job-43"))


@pytest.mark.parametrize(
    ("status", "state", "message"),
    [
        ({}, "pending", "waiting for the training pods"),
        ({"conditions": [{"type": "Suspended", "status": "True", "reason": "Suspended",
                          "message": "Kueue: waiting for quota in ClusterQueue team-a"}]},
         "pending", "suspended: Suspended: Kueue: waiting for quota in ClusterQueue team-a"),
        ({"conditions": [{"type": "Suspended", "status": "False", "reason": "Resumed", "message": ""}],
          "jobsStatus": [{"name": "node", "ready": 1, "active": 1, "failed": 0, "succeeded": 0, "suspended": 0}]},
         "running", "training"),
        ({"conditions": [{"type": "Created", "status": "True", "reason": "JobSetCreated", "message": ""}],
          "jobsStatus": [{"name": "node", "ready": 0, "active": 1, "failed": 0, "succeeded": 0, "suspended": 0}]},
         "pending", "waiting for the training pods"),
        ({"conditions": [{"type": "Complete", "status": "True", "reason": "JobsCompleted", "message": "done"}]},
         "succeeded", "JobsCompleted: done"),
        ({"conditions": [{"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "node-0 failed"}]},
         "failed", "FailedJobs: node-0 failed"),
    ],
)  # fmt: skip
def test_trainjob_status_follows_its_conditions(
    fake: FakeOperators, api: client.ApiClient, cfg: TrainerConfig, status: dict[str, Any], state: str, message: str
) -> None:
    runner = CustomJobRunner(api, cfg, TRAINJOB)
    req = request(cfg)
    runner.submit(req)
    req.output_dir.mkdir(parents=True)
    (req.output_dir / "progress.json").write_text(json.dumps({"fraction": 0.25}))
    fake.objects["trainjobs"]["graft-train-job-42"]["status"] = status
    got = runner.status("job-42")
    assert (got.state, got.message) == (state, message)
    assert got.progress == (1.0 if state == "succeeded" else 0.25)


def test_cancel_deletes_a_running_trainjob_and_keeps_a_finished_one(
    fake: FakeOperators, api: client.ApiClient, cfg: TrainerConfig
) -> None:
    runner = CustomJobRunner(api, cfg, TRAINJOB)
    for job_id in ("job-1", "job-2"):
        runner.submit(request(cfg, job_id))
    fake.objects["trainjobs"]["graft-train-job-2"]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    runner.cancel("job-1")
    runner.cancel("job-2")
    (delete,) = fake.calls("DELETE")
    assert delete.path == "/apis/trainer.kubeflow.org/v1alpha1/namespaces/graft/trainjobs/graft-train-job-1"
    assert delete.query["propagationPolicy"] == ["Foreground"]
    assert runner.status("job-1").state == "failed" and "not found" in runner.status("job-1").message
    runner.cancel("job-1")  # gone already: a no-op


def test_a_restarted_admin_follows_and_cancels_its_trainjobs(
    fake: FakeOperators, api: client.ApiClient, cfg: TrainerConfig
) -> None:
    CustomJobRunner(api, cfg, TRAINJOB).submit(request(cfg, "Job 7"))
    fake.objects["trainjobs"][next(iter(fake.objects["trainjobs"]))]["status"] = {
        "jobsStatus": [{"name": "node", "ready": 2, "active": 2, "failed": 0, "succeeded": 0, "suspended": 0}]
    }
    again = CustomJobRunner(api, cfg, TRAINJOB)  # a new process: nothing in memory but the settings
    assert again.status("Job 7").state == "running"
    again.cancel("Job 7")  # what JobManager.recover does with an interrupted job
    assert fake.objects["trainjobs"] == {}


def test_pytorchjob_sent_and_followed(fake: FakeOperators, api: client.ApiClient, cfg: TrainerConfig) -> None:
    runner = CustomJobRunner(api, cfg, PYTORCHJOB)
    req = request(cfg)
    runner.submit(req)
    (post,) = fake.calls("POST")
    assert post.path == "/apis/kubeflow.org/v1/namespaces/graft/pytorchjobs"
    spec = post.body["spec"]
    assert spec["nprocPerNode"] == "4"
    assert spec["runPolicy"]["schedulingPolicy"] == {"queue": "team-a"}
    master, worker = spec["pytorchReplicaSpecs"]["Master"], spec["pytorchReplicaSpecs"]["Worker"]
    assert (master["replicas"], worker["replicas"]) == (1, 1)
    (container,) = master["template"]["spec"]["containers"]
    assert container["name"] == "pytorch"  # the operator injects PET_* into this container
    assert container["command"] == ["torchrun", "-m", "graft.cli"]
    assert container["args"] == ["train", "--config", str(req.config_file)]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    obj = fake.objects["pytorchjobs"]["graft-train-job-42"]
    for conditions, state in [
        ([{"type": "Created", "status": "True"}], "pending"),
        ([{"type": "Suspended", "status": "True", "reason": "JobSuspended"}], "pending"),
        ([{"type": "Running", "status": "True"}], "running"),
        ([{"type": "Running", "status": "False"}, {"type": "Succeeded", "status": "True"}], "succeeded"),
        ([{"type": "Failed", "status": "True", "reason": "PyTorchJobFailed"}], "failed"),
    ]:
        obj["status"] = {"conditions": conditions}
        assert runner.status("job-42").state == state, conditions
    runner.cancel("job-42")  # failed: kept
    assert "graft-train-job-42" in fake.objects["pytorchjobs"]


def test_single_node_pytorchjob_has_no_workers(fake: FakeOperators, api: client.ApiClient, cfg: TrainerConfig) -> None:
    one = cfg.model_copy(update={"num_nodes": 1, "queue_name": None})
    CustomJobRunner(api, one, PYTORCHJOB).submit(request(one))
    spec = fake.calls("POST")[0].body["spec"]
    assert list(spec["pytorchReplicaSpecs"]) == ["Master"] and "schedulingPolicy" not in spec["runPolicy"]


def test_discovery_names_the_runner_to_use(api: client.ApiClient, fake: FakeOperators) -> None:
    assert available_runners(api) == ["trainjob", "pytorchjob", "kubernetes"]
    require_kind(api, "trainjob")
    fake.served = dict(OPERATOR)
    with pytest.raises(ConfigError, match=r"trainjobs\.trainer\.kubeflow\.org .* set GRAFT_RUNNER=pytorchjob"):
        require_kind(api, "trainjob")
    fake.served = {}
    with pytest.raises(ConfigError, match="GRAFT_RUNNER=kubernetes \\(plain Kubernetes Jobs"):
        require_kind(api, "pytorchjob")
    fake.served = {"kubeflow.org/v1": ["tfjobs"]}  # the group without the kind
    assert available_runners(api) == ["kubernetes"]


def test_built_from_admin_settings_at_start_up(
    fake: FakeOperators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from admin.runners import build_crd_runner
    from admin.settings import AdminSettings

    monkeypatch.setenv("GRAFT_KUBE_TRAINJOB_RUNTIME", "graft-torch-distributed")
    monkeypatch.setenv("GRAFT_KUBE_NUM_NODES", "3")
    with FakeServer(fake) as url:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": url}}],
            "users": [{"name": "u", "user": {"token": "t0ken"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
        }))  # fmt: skip
        runner = build_crd_runner(AdminSettings(runner="trainjob", state_dir=tmp_path), str(kubeconfig))
        assert runner.cfg.trainjob_runtime == "graft-torch-distributed" and runner.cfg.num_nodes == 3
        assert runner.status("nope").state == "failed"
        fake.served = dict(OPERATOR)
        with pytest.raises(ConfigError, match="GRAFT_RUNNER=pytorchjob"):
            build_crd_runner(AdminSettings(runner="trainjob", state_dir=tmp_path), str(kubeconfig))
        assert build_crd_runner(AdminSettings(runner="pytorchjob", state_dir=tmp_path), str(kubeconfig)).kind.kind == (
            "PyTorchJob"
        )


def test_progress_reported_by_the_runtime_counts(
    fake: FakeOperators, api: client.ApiClient, cfg: TrainerConfig
) -> None:
    runner = CustomJobRunner(api, cfg, TRAINJOB)
    runner.submit(request(cfg))  # no progress.json on the volume yet
    fake.objects["trainjobs"]["graft-train-job-42"]["status"] = {
        "trainerStatus": {"progressPercentage": 40, "lastUpdatedTime": "2026-12-02T19:00:00Z"},
        "jobsStatus": [{"name": "node", "ready": 1, "active": 1, "failed": 0, "succeeded": 0, "suspended": 0}],
    }
    got = runner.status("job-42")
    assert (got.state, got.progress) == ("running", 0.4)
