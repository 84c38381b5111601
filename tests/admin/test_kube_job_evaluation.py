"""A whole retraining job through the Kubernetes runner: the gate's predictions come from the training Job.

No cluster runs here. The API server is the fake at the HTTP transport (tests/support/fake_kube.py); the
"kubelet" below runs the container's command and arguments exactly as the Job sent them, with the Job's
environment only, on a temporary "volume" where the admin keeps its state. ``graft`` in that pod is a shim:
``graft train`` is the stand-in trainer (tests/support/fakes.py), anything else the real CLI, so
``graft job-eval`` runs for real.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from admin.cluster import KubeConfig
from admin.runners.kubernetes import KubernetesJobRunner
from admin.server import AdminServer
from admin.settings import AdminSettings
from tests.support.auth import ADMIN, ADMIN_TOKEN
from tests.support.fake_kube import FakeKube, FakeServer, api_client, fake_config
from tests.support.fakes import FAKE_TRAINER, FakeRollout, fake_evaluate, placeholder_export, write_toy_card
from tests.support.images import image_folder, png
from tests.support.waiting import wait_job, wait_ready

ROOT = Path(__file__).resolve().parents[2]


class Kubelet(FakeKube):
    """The fake API server, plus a pod per created Job: its container's command run here, then the Job's
    condition (Complete, or Failed with the pod's exit status)."""

    def __init__(self, bin_dir: Path) -> None:
        super().__init__()
        self.bin_dir = bin_dir
        self.pods_run: list[dict[str, Any]] = []
        self.threads: list[threading.Thread] = []

    def _jobs(self, method: str, ns: str, name: str | None, body: Any) -> tuple[int, Any]:
        code, answer = super()._jobs(method, ns, name, body)
        if method == "POST" and code == 201:
            t = threading.Thread(target=self._pod, args=(body["metadata"]["name"],), daemon=True)
            self.threads.append(t)
            t.start()
        return code, answer

    def _pod(self, name: str) -> None:
        job = self.jobs[name]
        (container,) = job["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        env.update(PATH=f"{self.bin_dir}:/usr/bin:/bin", PYTHONPATH=str(ROOT))
        with self.lock:
            job["status"] = {"active": 1, "ready": 1}
        done = subprocess.run([*container["command"], *container["args"]], env=env, capture_output=True, text=True,
                              timeout=300, check=False)  # fmt: skip
        self.pods_run.append({"env": env, "rc": done.returncode, "log": done.stdout + done.stderr})
        cond = {"type": "Complete", "status": "True"} if done.returncode == 0 else {
            "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
            "message": f"exit {done.returncode}"}  # fmt: skip
        with self.lock:
            job["status"] = {"conditions": [cond], "succeeded" if done.returncode == 0 else "failed": 1}


def shim(bin_dir: Path) -> Path:
    """``graft`` in the pod: the stand-in trainer for ``train``, the real CLI for the rest."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    graft = bin_dir / "graft"
    trainer = " ".join(FAKE_TRAINER)
    graft.write_text(f'#!/bin/sh\nif [ "$1" = train ]; then exec {trainer} "$@"; fi\n'
                     f'exec {sys.executable} -m graft.cli "$@"\n')  # fmt: skip
    graft.chmod(0o755)
    return bin_dir


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Kubelet, KubeConfig, Any]]:
    fake = Kubelet(shim(tmp_path / "bin"))
    cfg = fake_config(tmp_path)  # the data volume: tmp_path/data
    with FakeServer(fake) as url, api_client(url) as api:
        yield fake, cfg, api


def server(tmp_path: Path, cfg: KubeConfig, api: Any, port: int, **overrides: Any) -> AdminServer:
    data = cfg.data_mount_path
    base, initial = data / "base", data / "initial_run"
    image_folder(base, {"train": 3, "val": 6})
    write_toy_card(initial, ["ants", "bees"], 0.6)
    store = tmp_path / "store"
    placeholder_export(initial, store, "graft", "1", [])
    values: dict[str, Any] = {"admin_token": ADMIN_TOKEN, "admin_port": port, "state_dir": data / "state",
                              "model_store": store, "model_name": "graft", "base_data": base, "initial_run": initial,
                              "job_poll_s": 0.1, "gate_min_holdout": 4, **overrides}  # fmt: skip
    extra = {"evaluate": fake_evaluate, "export": placeholder_export}
    runner = KubernetesJobRunner(api, cfg)
    return AdminServer(AdminSettings(**values), runner=runner, rollout=FakeRollout(), app_kwargs=extra)


def retrain(c: httpx.Client) -> dict[str, Any]:
    for i in range(6):
        r = c.post("/v1/samples", files={"file": (f"s{i}.png", png(7000 + i), "image/png")},
                   data={"label": "ants" if i % 2 else "bees"})  # fmt: skip
        assert r.status_code == 201, r.text
    r = c.post("/v1/retrain", json={"epochs": 1})
    assert r.status_code == 202, r.text
    return wait_job(c, r.json()["job_id"], timeout=240)


def test_the_training_job_predicts_the_holdout_and_the_admin_judges_from_it(
    cluster: tuple[Kubelet, KubeConfig, Any], tmp_path: Path, free_port: int
) -> None:
    fake, cfg, api = cluster
    with server(tmp_path, cfg, api, free_port, job_timeout_s=900) as srv, \
            httpx.Client(base_url=srv.url, headers=ADMIN, timeout=30) as c:  # fmt: skip
        wait_ready(c)
        job = retrain(c)
    assert job["status"] in ("succeeded", "rejected"), job
    (pod,) = fake.pods_run
    assert pod["rc"] == 0, pod["log"][-3000:]
    assert "GRAFT_ADMIN_TOKEN" not in pod["env"] and not any("TOKEN" in k for k in pod["env"]), "no admin secrets"

    (sent,) = (r.body for r in fake.calls("POST"))
    spec = sent["spec"]
    assert 0 < spec["activeDeadlineSeconds"] <= 900, "training and evaluation under the job's timeout"
    (container,) = spec["template"]["spec"]["containers"]
    job_dir = cfg.data_mount_path / "state" / "jobs" / job["id"]
    request = job_dir / "job-eval" / "request.json"
    assert container["command"] == ["sh", "-c"] and container["args"][1:] == [
        "graft", "train", "--config", str(job_dir / "train-config.json")]  # fmt: skip
    assert {"name": "GRAFT_EVAL_REQUEST", "value": str(request)} in container["env"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[str(cfg.data_mount_path)]["readOnly"] is True
    assert mounts[str(request.parent)]["subPath"] == f"state/jobs/{job['id']}/job-eval", "results: the one new place"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    # The predictions came from the pod's step; the admin's own child evaluator never started.
    assert (request.parent / "candidate.json").is_file() and (request.parent / "champion.json").is_file()
    assert not (job_dir / "evaluate").exists(), "no evaluation child in the admin"
    holdout_n = job["metrics"]["candidate"]["n"]
    assert holdout_n >= 6 and job["metrics"]["champion"]["n"] == holdout_n


def test_a_failed_evaluation_in_the_job_is_done_by_the_admin(
    cluster: tuple[Kubelet, KubeConfig, Any], tmp_path: Path, free_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """``graft job-eval`` crashing does not fail the pod (no retraining); the admin evaluates in its child."""
    fake, cfg, api = cluster
    graft = fake.bin_dir / "graft"
    graft.write_text(graft.read_text().replace("#!/bin/sh\n", '#!/bin/sh\n[ "$1" = job-eval ] && exit 9\n'))
    with server(tmp_path, cfg, api, free_port) as srv, httpx.Client(base_url=srv.url, headers=ADMIN, timeout=30) as c:
        wait_ready(c)
        job = retrain(c)
    assert job["status"] in ("succeeded", "rejected"), job
    (pod,) = fake.pods_run
    assert pod["rc"] == 0 and "graft job-eval failed (status 9)" in pod["log"], pod["log"][-2000:]
    job_dir = cfg.data_mount_path / "state" / "jobs" / job["id"]
    assert (job_dir / "evaluate" / "evaluate.log").is_file(), "evaluated by the admin's child"
    assert "evaluating in the admin's child process" in caplog.text


def test_the_kubeflow_runners_leave_the_evaluation_to_the_admin(tmp_path: Path) -> None:
    from admin.runners.base import TrainRequest
    from admin.runners.custom_jobs import CustomJobRunner
    from admin.runners.pytorchjob import build_pytorchjob
    from admin.runners.trainjob import TrainerConfig, build_trainjob

    cfg = TrainerConfig(data_mount_path=tmp_path / "data")
    d = cfg.data_mount_path
    req = TrainRequest("j", d / "j/train-config.json", d / "j/run", evaluation=d / "j/job-eval/request.json",
                       timeout_s=120.5)  # fmt: skip
    tj, pj = build_trainjob(req, cfg), build_pytorchjob(req, cfg)
    assert tj["spec"]["trainer"]["args"] == pj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"][
        "containers"][0]["args"] == ["train", "--config", str(d / "j/train-config.json")]  # fmt: skip
    assert "GRAFT_EVAL_REQUEST" not in str(tj) + str(pj)
    assert tj["spec"]["activeDeadlineSeconds"] == pj["spec"]["runPolicy"]["activeDeadlineSeconds"] == 121
    assert not hasattr(CustomJobRunner, "evaluates_under"), "so the job asks them for no evaluation"


def test_the_job_deadline_is_what_is_left_of_the_job_timeout(tmp_path: Path) -> None:
    from admin.runners.base import TrainRequest
    from admin.runners.kube_jobs import active_deadline, build_job
    from graft.core.errors import UserInputError

    cfg = fake_config(tmp_path)
    d = cfg.data_mount_path
    req = TrainRequest("j", d / "j/train-config.json", d / "j/run")
    assert active_deadline(req, cfg) == cfg.active_deadline_seconds == 21600, "no budget given: the cap"
    assert active_deadline(TrainRequest("j", d / "c", d / "r", timeout_s=0.2), cfg) == 1
    assert active_deadline(TrainRequest("j", d / "c", d / "r", timeout_s=1e9), cfg) == 21600, "never past the cap"
    plain = build_job(req, cfg).spec.template.spec.containers[0]
    assert plain.command == ["graft"] and plain.args == ["train", "--config", str(d / "j/train-config.json")]
    with pytest.raises(UserInputError, match="evaluation request"):
        build_job(TrainRequest("j", d / "c", d / "r", evaluation=tmp_path / "elsewhere/request.json"), cfg)
