"""The Kubernetes job runner, driven through the real ``kubernetes`` client.

The API server is a fake at the HTTP boundary (tests/support/fake_kube.py): no cluster runs in CI. The
tests check the exact Job sent and how the Job's conditions are read back. The rollout:
tests/test_kube_rollout.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from admin.cluster import KubeConfig
from admin.runners.base import TrainRequest
from admin.runners.kube_jobs import job_name
from admin.runners.kubernetes import KubernetesJobRunner
from graft.core.errors import ClusterError, ConflictError, UserInputError
from tests.support.fake_kube import FakeKube, FakeServer, api_client, deployment, fake_config, mar


@pytest.fixture
def fake() -> FakeKube:
    return FakeKube()


@pytest.fixture
def api(fake: FakeKube) -> Iterator[client.ApiClient]:
    with FakeServer(fake) as url, api_client(url) as c:
        yield c


@pytest.fixture
def cfg(tmp_path: Path) -> KubeConfig:
    return fake_config(tmp_path)


def request(cfg: KubeConfig, job_id: str = "job-42", **kw: Any) -> TrainRequest:
    data = cfg.data_mount_path
    return TrainRequest(job_id, data / f"admin/jobs/{job_id}/train-config.json", data / f"admin/runs/{job_id}", **kw)


# ------------------------------------------------------------------ job runner


def test_submit_sends_the_exact_job(fake: FakeKube, api: client.ApiClient, cfg: KubeConfig) -> None:
    inputs = (cfg.data_mount_path / "admin/manifests/m.json", cfg.data_mount_path / "runs/v1")
    req = request(cfg, inputs=inputs)
    KubernetesJobRunner(api, cfg).submit(req)

    (post,) = fake.calls("POST")
    assert post.path == "/apis/batch/v1/namespaces/graft/jobs"
    job = post.body
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["metadata"]["name"] == "graft-train-job-42"
    assert job["metadata"]["annotations"] == {"graft.io/job-id": "job-42", "graft.io/output-dir": str(req.output_dir)}
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (1, 21600, 604800)
    assert spec["podFailurePolicy"]["rules"][0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": "graft-admin-data"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "10Gi"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
    ]
    (container,) = pod["containers"]
    assert container == {
        "name": "train",
        "image": "registry.example/graft:1.0-gpu",
        "imagePullPolicy": "IfNotPresent",
        "command": ["graft"],
        "args": ["train", "--config", str(req.config_file)],
        "env": [
            {"name": "GRAFT_JOB_ID", "value": "job-42"},
            {"name": "HOME", "value": "/tmp"},
            {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ],
        "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "data", "mountPath": str(cfg.data_mount_path), "readOnly": True},
            {"name": "data", "mountPath": str(req.output_dir), "subPath": f"admin/runs/{req.job_id}"},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    assert container["args"] == ["train", *req.argv()[1:]]


def test_cpu_jobs_ask_for_no_gpu(fake: FakeKube, api: client.ApiClient, cfg: KubeConfig) -> None:
    KubernetesJobRunner(api, cfg.model_copy(update={"gpu_count": 0, "tolerations": []})).submit(request(cfg))
    pod = fake.calls("POST")[0].body["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"memory": "32Gi"}
    assert "tolerations" not in pod


def test_paths_outside_the_data_volume_are_refused(fake: FakeKube, api: client.ApiClient, cfg: KubeConfig) -> None:
    for bad in (
        TrainRequest("j1", Path("/etc/c.json"), cfg.data_mount_path / "runs/j1"),
        TrainRequest("j1", cfg.data_mount_path / "c.json", cfg.data_mount_path / "../../runs/j1"),
        TrainRequest("j1", cfg.data_mount_path / "c.json", cfg.data_mount_path / "runs/j1", (Path("/etc/m.json"),)),
    ):
        with pytest.raises(UserInputError, match="not under the data volume"):
            KubernetesJobRunner(api, cfg).submit(bad)
    assert fake.requests == []


def test_second_submit_of_a_job_id_is_a_conflict(api: client.ApiClient, cfg: KubeConfig) -> None:
    runner = KubernetesJobRunner(api, cfg)
    runner.submit(request(cfg))
    with pytest.raises(ConflictError, match="already exists"):
        runner.submit(request(cfg))


def test_refused_by_rbac_is_a_typed_error(fake: FakeKube, api: client.ApiClient, cfg: KubeConfig) -> None:
    fake.forbid.add("POST")
    with pytest.raises(ClusterError, match=r"HTTP 403.*Role"):
        KubernetesJobRunner(api, cfg).submit(request(cfg))


@pytest.mark.parametrize(
    ("status", "state", "message"),
    [
        ({}, "pending", "waiting for a pod"),
        ({"active": 1, "ready": 0}, "pending", "waiting for a pod"),
        ({"active": 1, "ready": 1}, "running", "training"),
        ({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}, "succeeded", "Complete"),
        (
            {
                "failed": 1,
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "DeadlineExceeded",
                        "message": "Job was active longer than specified deadline",
                    }
                ],
            },
            "failed",
            "DeadlineExceeded: Job was active longer",
        ),
        (
            {"conditions": [{"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"}]},
            "failed",
            "BackoffLimitExceeded",
        ),
        ({"conditions": [{"type": "Failed", "status": "False"}], "active": 1, "ready": 1}, "running", "training"),
    ],
)
def test_status_follows_the_job_conditions(
    fake: FakeKube, api: client.ApiClient, cfg: KubeConfig, status: dict[str, Any], state: str, message: str
) -> None:
    req = request(cfg)
    runner = KubernetesJobRunner(api, cfg)
    runner.submit(req)
    req.output_dir.mkdir(parents=True)
    (req.output_dir / "progress.json").write_text(json.dumps({"phase": "train", "epoch": 3, "fraction": 0.6}))
    fake.jobs["graft-train-job-42"]["status"] = status
    got = runner.status("job-42")
    assert got.state == state
    assert got.message.startswith(message)
    assert got.progress == (1.0 if state == "succeeded" else 0.6)


def test_status_says_why_a_pod_waits(fake: FakeKube, api: client.ApiClient, cfg: KubeConfig) -> None:
    runner = KubernetesJobRunner(api, cfg)
    runner.submit(request(cfg))
    fake.jobs["graft-train-job-42"]["status"] = {"active": 1}
    fake.pods = [
        {
            "metadata": {"name": "p"},
            "status": {
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                    }
                ]
            },
        }
    ]
    got = runner.status("job-42")
    assert (got.state, got.message) == (
        "pending",
        "not scheduled: Unschedulable 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
    )
    (pods,) = fake.calls("GET")[-1:]
    assert pods.path == "/api/v1/namespaces/graft/pods" and pods.query["labelSelector"] == [
        "job-name=graft-train-job-42"
    ]


def test_unknown_job_is_failed_not_an_exception(api: client.ApiClient, cfg: KubeConfig) -> None:
    got = KubernetesJobRunner(api, cfg).status("nope")
    assert got.state == "failed" and "not found" in got.message


def test_cancel_deletes_a_running_job_with_its_pods(fake: FakeKube, api: client.ApiClient, cfg: KubeConfig) -> None:
    runner = KubernetesJobRunner(api, cfg)
    runner.submit(request(cfg))
    fake.jobs["graft-train-job-42"]["status"] = {"active": 1, "ready": 1}
    runner.cancel("job-42")
    (delete,) = fake.calls("DELETE")
    assert delete.path == "/apis/batch/v1/namespaces/graft/jobs/graft-train-job-42"
    assert delete.query.get("propagationPolicy") == ["Foreground"]
    runner.cancel("job-42")  # gone: a no-op
    assert len(fake.calls("DELETE")) == 1


def test_cancel_keeps_a_finished_job(fake: FakeKube, api: client.ApiClient, cfg: KubeConfig) -> None:
    runner = KubernetesJobRunner(api, cfg)
    runner.submit(request(cfg))
    fake.jobs["graft-train-job-42"]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    runner.cancel("job-42")
    assert fake.calls("DELETE") == []


def test_job_names_are_dns_labels() -> None:
    assert job_name("graft-train", "job-42") == "graft-train-job-42"
    odd = job_name("graft-train", "Job_42/ü" + "x" * 80)
    assert len(odd) <= 63 and odd.startswith("graft-train-job-42")
    assert odd != job_name("graft-train", "Job_42/u" + "x" * 80)


# ------------------------------------------------------------------ construction from the admin settings


def test_built_from_admin_settings_with_a_kubeconfig(
    fake: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from admin.rollouts import kubernetes as kube_rollout
    from admin.runners import kubernetes as kube_runner
    from admin.settings import AdminSettings

    fake.deployment = deployment(env_value="graft=1")
    store = tmp_path / "store"
    store.mkdir()
    mar(store / "graft-1.mar", version="1")
    monkeypatch.setenv("GRAFT_KUBE_NAMESPACE", "graft")
    settings = AdminSettings(
        model_store=store, state_dir=tmp_path / "admin", torchserve_inference_url="http://graft-inference:8080"
    )
    with FakeServer(fake) as url:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "fake",
                    "clusters": [{"name": "fake", "cluster": {"server": url}}],
                    "users": [{"name": "u", "user": {"token": "t0ken"}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
                }
            )
        )
        rollout = kube_rollout.build_rollout(settings, kubeconfig=str(kubeconfig))
        assert rollout.cfg.model_store_dir == store
        assert rollout.cfg.inference_url == "http://graft-inference:8080"
        assert (rollout.versions("graft"), rollout.default_version("graft")) == (["1"], "1")
        runner = kube_runner.build_runner(settings, kubeconfig=str(kubeconfig))
        assert runner.status("nope").state == "failed"
    assert {r.path for r in fake.requests} == {
        "/apis/apps/v1/namespaces/graft/deployments/graft-inference",
        "/apis/batch/v1/namespaces/graft/jobs/graft-train-nope",
    }


def test_no_cluster_and_no_kubeconfig_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from admin.cluster import load_api_client
    from graft.core.errors import ConfigError

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="no Kubernetes credentials"):
        load_api_client(str(tmp_path / "missing-kubeconfig"))
