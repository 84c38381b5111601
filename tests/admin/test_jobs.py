"""Retraining jobs end to end through the HTTP API, with a stand-in trainer (a real child process),
a deterministic fake evaluator and an in-memory rollout: the state machine, the gate, promotion,
rollback, failures of every step, one-job-at-a-time, restart recovery and the auto trigger."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from admin.runners.local import LocalJobRunner
from admin.server import AdminServer
from admin.settings import AdminSettings
from tests.support.auth import ADMIN, ADMIN_TOKEN
from tests.support.fakes import FAKE_TRAINER, FakeRollout, fake_evaluate, placeholder_export, write_toy_card
from tests.support.images import image_folder, png
from tests.support.waiting import wait_for, wait_job, wait_ready


class Env:
    """A state folder, base data, the imported first model (quality 0.6) and a fake server."""

    def __init__(self, tmp_path: Path, port: int):
        self.tmp = tmp_path
        self.port = port
        self.base = tmp_path / "base"
        image_folder(self.base, {"train": 3, "val": 6})
        self.initial = tmp_path / "initial_run"
        write_toy_card(self.initial, ["ants", "bees"], 0.6)
        self.store = tmp_path / "store"
        placeholder_export(self.initial, self.store, "graft", "1", [])
        self.rollout = FakeRollout()
        self.runner_env: dict[str, str] = {}

    def settings(self, **overrides: Any) -> AdminSettings:
        values: dict[str, Any] = {
            "admin_token": ADMIN_TOKEN,
            "admin_port": self.port,
            "state_dir": self.tmp / "state",
            "model_store": self.store,
            "model_name": "graft",
            "base_data": self.base,
            "initial_run": self.initial,
            "job_poll_s": 0.1,
            "gate_min_holdout": 4,
        }
        values.update(overrides)
        return AdminSettings(**values)

    def server(self, **overrides: Any) -> AdminServer:
        runner = LocalJobRunner(command=FAKE_TRAINER, env=self.runner_env)
        extra = {"evaluate": fake_evaluate, "export": placeholder_export}
        return AdminServer(self.settings(**overrides), runner=runner, rollout=self.rollout, app_kwargs=extra)


@pytest.fixture
def env(tmp_path: Path, free_port: int) -> Env:
    return Env(tmp_path, free_port)


@pytest.fixture
def api(env: Env) -> Iterator[httpx.Client]:
    with env.server() as server, httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as c:
        wait_ready(c)
        yield c


def retrain(c: httpx.Client, env: Env | None = None, quality: float | None = None, **body: Any) -> dict[str, Any]:
    """Start a job (the fake trainer's model claims ``quality``) and wait for it to finish."""
    if env is not None and quality is not None:
        env.runner_env["GRAFT_FAKE_QUALITY"] = str(quality)
    r = c.post("/v1/retrain", json=body)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/jobs/{r.json()['job_id']}"
    return wait_job(c, r.json()["job_id"])


def post(c: httpx.Client, seed: int, label: str) -> dict[str, Any]:
    r = c.post("/v1/samples", files={"file": (f"s{seed}.png", png(seed), "image/png")}, data={"label": label})
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_start_up_imports_the_first_model_and_serves_it(env: Env, api: httpx.Client) -> None:
    models = api.get("/v1/models").json()
    assert models["default"] == "1" and models["model_name"] == "graft"
    (m,) = models["models"]
    assert m["source"] == "import" and m["default"] and m["labels"] == ["ants", "bees"] and m["deployed"]
    assert env.rollout.default_version("graft") == "1", "reconciled onto the server at start"


def test_better_candidate_is_promoted_with_numbers(env: Env, api: httpx.Client) -> None:
    for i in range(6):
        post(api, 5000 + i, "ants" if i % 2 else "bees")
    job = retrain(api, env, 0.95, epochs=2)
    assert job["status"] == "succeeded" and job["promoted"] and job["candidate_version"] == "2", job
    assert job["progress"] == 1.0 and job["champion_version"] == "1"
    cand, champ = job["metrics"]["candidate"], job["metrics"]["champion"]
    assert cand["n"] == champ["n"] >= 12, "same holdout for both"
    assert cand["accuracy"] >= champ["accuracy"]
    assert (
        job["reason"].startswith("promoted version 2: passed: candidate") and f"{cand['accuracy']:.4f}" in job["reason"]
    )
    assert env.rollout.default_version("graft") == "2"
    assert [c for c in env.rollout.calls if c[1] == "2"] == [("deploy", "2"), ("smoke_test", "2"), ("set_default", "2")]
    models = api.get("/v1/models").json()
    m2 = next(m for m in models["models"] if m["version"] == "2")
    assert models["default"] == "2" and m2["parent_version"] == "1" and m2["status"] == "accepted"
    assert m2["dataset_digest"].startswith("sha256:") and m2["num_holdout"] == cand["n"]
    assert m2["metrics"]["holdout"]["accuracy"] == cand["accuracy"] and m2["lineage"]["dataset_digest"]
    assert (env.tmp / "state" / "jobs" / job["id"] / "train.log").is_file()
    stats = api.get("/v1/samples/stats").json()
    assert stats["total"] == 6 and stats["since_champion"] == 0 and stats["champion_version"] == "2"
    metrics = api.get("/metrics").text
    assert 'graft_admin_jobs_total{outcome="succeeded"} 1.0' in metrics
    assert "graft_admin_serving_version 2.0" in metrics
    assert 'graft_admin_job_duration_seconds_count{outcome="succeeded"} 1.0' in metrics


def test_candidate_takes_the_champions_export_settings(env: Env) -> None:
    """A retraining keeps the champion's archive choices (INT8 too: tests/admin/test_int8_gate.py)."""
    from training.export_settings import ExportSettings, record_settings, recorded_settings

    chosen = ExportSettings({"backend": "onnx", "batch_size": 4, "max_batch_delay_ms": 7})
    record_settings(env.initial, chosen)
    with env.server() as server, httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as api:
        wait_ready(api)
        for i in range(6):
            post(api, 6000 + i, "ants" if i % 2 else "bees")
        job = retrain(api, env, 0.95, epochs=1)
    assert job["status"] == "succeeded", job
    candidate_run = env.tmp / "state" / "jobs" / job["id"] / "run"
    assert recorded_settings(candidate_run) == chosen


def test_worse_candidate_is_rejected_and_the_champion_stays(env: Env, api: httpx.Client) -> None:
    job = retrain(api, env, 0.1)
    assert job["status"] == "rejected" and not job["promoted"], job
    assert job["reason"].startswith("rejected: candidate") and "significantly worse" in job["reason"]
    assert "95% CI" in job["reason"] and "what to do next" in job["reason"]
    assert job["gate"]["comparison"]["p_worse"] < 0.05
    assert env.rollout.default_version("graft") == "1" and "2" not in env.rollout.versions("graft")
    models = api.get("/v1/models").json()
    assert models["default"] == "1"
    assert next(m for m in models["models"] if m["version"] == "2")["status"] == "rejected"
    r = api.post("/v1/models/2/promote")
    assert r.status_code == 409 and "force=true" in r.json()["error"]["message"]


def test_an_averaged_candidate_is_rejected_when_the_refit_alone_is_significantly_worse(
    env: Env, api: httpx.Client
) -> None:
    """The fake trainer's run is "averaged with the champion" and keeps "the refit alone" beside it
    (``run/unaveraged``); the gate judges both, in the evaluation child, on the same fair holdout."""
    env.runner_env["GRAFT_FAKE_UNAVERAGED"] = "0.1"
    job = retrain(api, env, 0.95)
    assert job["status"] == "rejected" and not job["promoted"], job
    assert job["reason"].startswith("rejected: before averaging with the champion, the refit alone"), job["reason"]
    assert "significantly worse" in job["reason"] and "averaged, as it would have served: candidate" in job["reason"]
    own = job["gate"]["unaveraged"]
    assert own["rejected"] and own["p_worse"] < 0.05 and job["gate"]["comparison"]["p_worse"] > 0.5, job["gate"]
    assert env.rollout.default_version("graft") == "1" and "2" not in env.rollout.versions("graft")
    assert "data check" in job["reason"]  # what to do next: the samples' labels
    for i in range(4):
        post(api, 7100 + i, "ants" if i % 2 else "bees")
    env.runner_env["GRAFT_FAKE_UNAVERAGED"] = "0.95"
    job = retrain(api, env, 0.95)
    assert job["status"] == "succeeded" and job["promoted"], job
    assert "before averaging with the champion, the refit alone +" in job["reason"], job["reason"]
    assert not job["gate"]["unaveraged"]["rejected"] and env.rollout.default_version("graft") == "3"


def test_new_label_is_reported_and_judged_on_shared_classes(env: Env, api: httpx.Client) -> None:
    for i in range(16):  # enough that at least min_label_samples (10) land in train
        post(api, 7000 + i, "wasps")
    job = retrain(api, env, 0.9)
    assert job["new_labels"] == ["wasps"] and "wasps" in job["reason"], job
    assert job["gate"]["shared_labels"] == ["ants", "bees"]
    assert job["metrics"]["candidate"]["n"] == job["metrics"]["champion"]["n"] == 12, "wasps left out of the comparison"


def test_one_job_at_a_time_and_cancel(env: Env, api: httpx.Client) -> None:
    env.runner_env["GRAFT_FAKE_EPOCH_S"] = "1.0"
    first = api.post("/v1/retrain", json={"epochs": 30}).json()["job_id"]
    second = api.post("/v1/retrain")
    assert second.status_code == 409 and first in second.json()["error"]["message"]
    wait_for(lambda: api.get(f"/v1/jobs/{first}").json()["phase"] == "training", 20, what="the training phase")
    assert api.post(f"/v1/jobs/{first}/cancel").status_code == 202
    job = wait_job(api, first)
    assert job["status"] == "failed" and job["reason"].startswith("interrupted: cancelled"), job
    assert api.post(f"/v1/jobs/{first}/cancel").status_code == 409
    env.runner_env.clear()
    assert retrain(api, env, 0.9)["status"] == "succeeded", "the slot is free again"


def test_training_crash_fails_the_job_not_the_service(env: Env, api: httpx.Client) -> None:
    env.runner_env["GRAFT_FAKE_FAIL"] = "1"
    job = retrain(api)
    assert job["status"] == "failed" and "exit status 3" in job["reason"] and "simulated crash" in job["reason"]
    assert api.get("/healthz").status_code == 200
    assert api.get("/v1/models").json()["default"] == "1"
    assert next(m for m in api.get("/v1/models").json()["models"] if m["version"] == "2")["status"] == "failed"


@pytest.mark.parametrize("step", ["deploy", "smoke"])
def test_rollout_failure_keeps_the_champion(env: Env, api: httpx.Client, step: str) -> None:
    getattr(env.rollout, f"fail_{step}").add("2")
    job = retrain(api, env, 0.95)
    assert job["status"] == "failed" and not job["promoted"] and "fake:" in job["reason"], job
    assert env.rollout.default_version("graft") == "1" and env.rollout.versions("graft") == ["1"]
    assert api.get("/v1/models").json()["default"] == "1"
    assert "graft_admin_rollout_failures_total 1.0" in api.get("/metrics").text


def test_promote_rollback_and_retire_old_versions(env: Env, api: httpx.Client) -> None:
    for q in (0.9, 0.95, 0.99):
        assert retrain(api, env, q)["status"] == "succeeded"
    assert env.rollout.default_version("graft") == "4"
    assert sorted(env.rollout.versions("graft")) == ["3", "4"], "keep_versions=2: the default and its rollback target"
    r = api.post("/v1/rollback")
    assert r.status_code == 200 and r.json()["version"] == "3" and r.json()["default"]
    assert env.rollout.default_version("graft") == "3"
    r = api.post("/v1/rollback")
    assert r.status_code == 200 and r.json()["version"] == "2", "walks back, does not bounce"
    assert env.rollout.default_version("graft") == "2" and "2" in env.rollout.versions("graft"), "redeployed"
    r = api.post("/v1/models/4/promote")
    assert r.status_code == 200 and env.rollout.default_version("graft") == "4"
    assert api.post("/v1/models/4/promote").status_code == 409, "already the default"
    actions = [h["action"] for h in api.get("/v1/models").json()["history"]]
    assert actions == ["import", "promote", "promote", "promote", "rollback", "rollback", "promote"]


def test_restart_fails_interrupted_jobs_and_kills_their_trainer(env: Env) -> None:
    with env.server() as server, httpx.Client(base_url=server.url, headers=ADMIN) as c:
        wait_ready(c)
        post(c, 1, "ants")
    # What a crash leaves behind: a job row still 'running' and its training process still alive.
    job_dir = env.tmp / "state" / "jobs" / "deadbeef0000"
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", str(job_dir)], start_new_session=True
    )
    con = sqlite3.connect(env.tmp / "state" / "admin.sqlite3")
    con.execute(
        "INSERT INTO jobs (id, status, phase, candidate_version, job_dir, pid, created_at)"
        " VALUES ('deadbeef0000', 'running', 'training', '2', ?, ?, '2026-01-01T00:00:00+00:00')",
        (str(job_dir), orphan.pid),
    )
    con.commit()
    con.close()
    try:
        with env.server() as server, httpx.Client(base_url=server.url, headers=ADMIN) as c:
            job = c.get("/v1/jobs/deadbeef0000").json()
            assert (
                job["status"] == "failed" and job["reason"].startswith("interrupted:") and "training" in job["reason"]
            )
            assert orphan.wait(timeout=10) == -signal.SIGKILL, "the orphaned trainer was stopped"
            assert c.get("/v1/models").json()["default"] == "1"
            assert c.get("/v1/samples/stats").json()["total"] == 1
            assert c.post("/v1/retrain").status_code == 202
    finally:
        if orphan.poll() is None:
            os.killpg(orphan.pid, signal.SIGKILL)


def test_auto_trigger_after_n_new_samples(env: Env) -> None:
    with env.server(auto_retrain_after=3) as server, httpx.Client(base_url=server.url, headers=ADMIN) as c:
        wait_ready(c)
        post(c, 1, "ants")
        post(c, 2, "bees")
        assert c.get("/v1/jobs").json()["jobs"] == []
        post(c, 2, "bees")  # a duplicate is not a new sample
        assert c.get("/v1/jobs").json()["jobs"] == []
        post(c, 3, "ants")
        jobs = c.get("/v1/jobs").json()["jobs"]
        assert len(jobs) == 1 and jobs[0]["trigger"] == "auto"
        wait_job(c, jobs[0]["id"])
        post(c, 4, "ants")
        assert len(c.get("/v1/jobs").json()["jobs"]) == 1, "counts from the last snapshot, not from zero"


def test_a_candidate_that_adds_labels_waits_for_an_admin(env: Env, api: httpx.Client) -> None:
    for i in range(16):
        post(api, 7100 + i, "wasps")
    job = retrain(api, env, 0.95)
    assert job["status"] == "held" and not job["promoted"] and "held for an admin" in job["reason"], job
    assert "POST /v1/models/2/promote" in job["reason"] and job["new_labels"] == ["wasps"]
    assert env.rollout.default_version("graft") == "1", "nothing changed in service"
    r = api.post("/v1/models/2/promote")
    assert r.status_code == 200 and env.rollout.default_version("graft") == "2"
    assert "wasps" in [x["name"] for x in api.get("/v1/labels").json()["labels"] if x["in_service"]]


def test_a_new_label_with_few_samples_stays_out_of_training(env: Env, api: httpx.Client) -> None:
    for i in range(3):
        post(api, 7200 + i, "hornets")
    job = retrain(api, env, 0.95)
    assert job["status"] == "succeeded" and job["new_labels"] == [], job
    assert "hornets" in job["reason"] and "left out until they have 10 training samples" in job["reason"]
    labels = json.loads((env.tmp / "state" / "jobs" / job["id"] / "manifest.json").read_text())["items"]
    assert not [i for i in labels if i["label"] == "hornets"]


def test_the_trainer_inherits_no_secret(env: Env, api: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFT_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("GRAFT_SAMPLES_TOKEN", "samples-secret-0123456789")
    monkeypatch.setenv("SOME_CLOUD_SECRET", "s3cr3t")
    job = retrain(api, env, 0.9)
    names = json.loads((env.tmp / "state" / "jobs" / job["id"] / "run" / "environment.json").read_text())
    assert "PATH" in names and "GRAFT_FAKE_QUALITY" in names
    assert not {"GRAFT_ADMIN_TOKEN", "GRAFT_SAMPLES_TOKEN", "SOME_CLOUD_SECRET"} & set(names)
