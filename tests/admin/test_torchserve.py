"""The rollout against a real TorchServe (Java frontend, Python workers), with tiny toy-handler archives:
register/set-default/unregister, key renewal, zero failed predictions across a promotion and a
rollback, and a crash of the admin process in the middle of a job.

The models are toys (a handler that answers its first label and its version) so these tests are
about the swap mechanics; tests/admin/test_e2e.py runs the same loop with real trained models.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from admin.rollouts.torchserve import TorchServeRollout
from admin.runners.local import LocalJobRunner
from admin.server import AdminServer
from admin.settings import AdminSettings
from graft.core.errors import ConflictError, UpstreamError
from tests.support.auth import ADMIN, ADMIN_TOKEN
from tests.support.fakes import FAKE_TRAINER, fake_evaluate, toy_export, write_toy_card
from tests.support.images import png
from tests.support.paths import REPO
from tests.support.streams import PredictionStream
from tests.support.waiting import wait_for, wait_job, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.torchserve]
SLOW = 0.3  # seconds per prediction of the "swap" toy model: requests are in flight at every swap


class Served:
    """One TorchServe for the module; each test uses its own model name in the shared store."""

    def __init__(self, root: Path):
        from graft.torchserve.launcher import ServeConfig, TorchServe, free_ports

        self.root = root
        self.store = root / "store"
        self.runs = root / "runs"
        for name in ("rollout", "swap", "crash"):
            write_toy_card(self.runs / name, ["ants", "bees"], 0.6)
            toy_export(self.runs / name, self.store, name, "1", delay_s=SLOW if name == "swap" else 0.0)
        inf, mgmt, met, g1, g2 = free_ports(5)
        self.server = TorchServe(
            ServeConfig(
                model_store=self.store,
                inference_address=f"http://127.0.0.1:{inf}",
                management_address=f"http://127.0.0.1:{mgmt}",
                metrics_address=f"http://127.0.0.1:{met}",
                grpc_inference_port=g1,
                grpc_management_port=g2,
                workdir=root / "ts",
            )
        )

    def rollout(self) -> TorchServeRollout:
        s = self.server
        return TorchServeRollout(s.management_url, s.inference_url, s.key_file, timeout_s=120)

    def predict(self, client: httpx.Client, name: str, version: str | None = None) -> httpx.Response:
        path = f"/predictions/{name}" + (f"/{version}" if version else "")
        return client.post(
            f"{self.server.inference_url}{path}",
            content=b"any bytes",
            headers={**self.server.headers("inference"), "Content-Type": "application/octet-stream"},
        )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, java: str) -> Iterator[Served]:
    s = Served(tmp_path_factory.mktemp("admin_ts"))
    s.server.start()
    try:
        s.server.wait_ready(timeout=240)
        yield s
    finally:
        s.server.stop()


def images(root: Path, n: int = 2) -> list[Path]:
    out = []
    for i in range(n):
        p = root / f"smoke_{i}.png"
        p.write_bytes(png(90_000 + i))
        out.append(p)
    return out


def test_rollout_registers_swaps_and_retires_on_torchserve(served: Served, tmp_path: Path) -> None:
    ro = served.rollout()
    name = "rollout"
    assert ro.versions(name) == ["1"] and ro.default_version(name) == "1" and ro.ping()
    mar2 = toy_export(served.runs / name, served.store, name, "2")
    ro.deploy(name, "2", mar2)
    assert sorted(ro.versions(name)) == ["1", "2"] and ro.default_version(name) == "1", "deploy never swaps"
    ro.smoke_test(name, "2", images(tmp_path), ["ants", "bees"])
    with pytest.raises(UpstreamError, match="unknown label"):
        ro.smoke_test(name, "2", images(tmp_path, 1), ["wasps"])
    ro.deploy(name, "2", mar2)  # idempotent: already registered
    ro.set_default(name, "2")
    with httpx.Client(timeout=30) as c:
        assert served.predict(c, name).json()[0]["version"] == "2"
    with pytest.raises(ConflictError):
        ro.retire(name, "2")
    ro.retire(name, "1")
    ro.retire(name, "1")  # idempotent
    assert ro.versions(name) == ["2"]
    with pytest.raises(UpstreamError, match="refused"):
        ro.deploy(name, "3", served.store / "rollout-3.mar")  # no such archive
    assert ro.versions(name) == ["2"] and ro.default_version(name) == "2"
    with pytest.raises(UpstreamError):
        ro.set_default(name, "9")


def test_expired_management_key_is_renewed(served: Served) -> None:
    ro = served.rollout()
    key_file = served.server.key_file
    doc = json.loads(key_file.read_text())
    old = doc["management"]["key"]
    doc["management"]["expiration time"] = "2000-01-01T00:00:00.000000000Z"
    key_file.write_text(json.dumps(doc))
    assert ro.versions("rollout")  # renews first, then succeeds
    assert json.loads(key_file.read_text())["management"]["key"] != old
    with httpx.Client() as c:
        r = c.get(f"{served.server.management_url}/models", headers={"Authorization": f"Bearer {old}"})
        assert r.status_code == 400 and "InvalidKeyException" in r.text, "the old key is dead: renewal was real"


def hammer(served: Served, name: str, threads: int) -> PredictionStream:
    """Client threads sending predictions to the default version without pause."""
    return PredictionStream(lambda c: served.predict(c, name), lambda r: str(r.json()[0]["version"]), threads, 0, 20)


def admin_settings(served: Served, tmp_path: Path, name: str, **extra: Any) -> AdminSettings:
    from graft.torchserve.launcher import free_ports

    base = tmp_path / "base"

    seed = 50_000
    for split in ("train", "val"):
        for label in ("ants", "bees"):
            d = base / split / label
            d.mkdir(parents=True)
            for i in range(3):
                seed += 1
                (d / f"{label}_{split}_{i}.png").write_bytes(png(seed))
    values: dict[str, Any] = {
        "admin_token": ADMIN_TOKEN,
        "admin_port": free_ports(1)[0],
        "state_dir": tmp_path / "state",
        "model_store": served.store,
        "model_name": name,
        "base_data": base,
        "initial_run": served.runs / name,
        "torchserve_management_url": served.server.management_url,
        "torchserve_inference_url": served.server.inference_url,
        "torchserve_key_file": served.server.key_file,
        "job_poll_s": 0.2,
        "gate_min_holdout": 1,
    }
    values.update(extra)
    return AdminSettings(**values)


def test_zero_failed_predictions_across_promotion_and_rollback(served: Served, tmp_path: Path) -> None:
    st = admin_settings(served, tmp_path, "swap")
    runner = LocalJobRunner(command=FAKE_TRAINER, env={"GRAFT_FAKE_QUALITY": "0.95"})
    extra = {"evaluate": fake_evaluate, "export": functools.partial(toy_export, delay_s=SLOW)}
    with (
        AdminServer(st, runner=runner, app_kwargs=extra) as admin,
        httpx.Client(base_url=admin.url, headers=ADMIN, timeout=120) as api,
        hammer(served, "swap", threads=4) as stream,
    ):
        wait_ready(api)
        wait_for(lambda: stream.ok >= 3, 30, what="predictions flowing before the swap")
        job = api.post("/v1/retrain").json()
        done = wait_job(api, job["job_id"], timeout=180)
        assert done["status"] == "succeeded", done
        assert served.rollout().default_version("swap") == "2"
        wait_for(lambda: "2" in stream.versions, 30, what="version 2 answering the stream")
        r = api.post("/v1/rollback")
        assert r.status_code == 200 and r.json()["version"] == "1", r.text
        seen = stream.ok
        wait_for(lambda: stream.ok >= seen + 3, 30, what="predictions after the rollback")
        r = api.post("/v1/models/2/promote")
        assert r.status_code == 200, r.text
        seen = stream.ok
        wait_for(lambda: stream.ok >= seen + 3, 30, what="predictions after the promotion")
    assert stream.errors == [], stream.errors[:5]
    assert stream.ok > 20 and stream.versions == {"1", "2"}, (stream.ok, stream.versions)


def _admin_cmd(st: AdminSettings) -> tuple[list[str], dict[str, str]]:
    cmd = [sys.executable, "-m", "graft.cli", "admin", "--admin-port", str(st.admin_port)]
    env = {
        **os.environ,
        "GRAFT_ADMIN_TOKEN": ADMIN_TOKEN,
        "GRAFT_STATE_DIR": str(st.state_dir),
        "GRAFT_MODEL_STORE": str(st.model_store),
        "GRAFT_MODEL_NAME": st.model_name,
        "GRAFT_BASE_DATA": str(st.base_data),
        "GRAFT_INITIAL_RUN": str(st.initial_run),
        "GRAFT_TORCHSERVE_MANAGEMENT_URL": st.torchserve_management_url,
        "GRAFT_TORCHSERVE_INFERENCE_URL": st.torchserve_inference_url,
        "GRAFT_TORCHSERVE_KEY_FILE": str(st.torchserve_key_file),
        "GRAFT_TRAIN_COMMAND": json.dumps(FAKE_TRAINER),
        "GRAFT_JOB_POLL_S": "0.2",
        "GRAFT_FAKE_EPOCH_S": "1.0",
    }
    return cmd, env


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "the admin process died"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the admin process did not become ready"
        time.sleep(0.2)


def test_admin_crash_during_a_job(served: Served, tmp_path: Path) -> None:
    st = admin_settings(served, tmp_path, "crash")
    cmd, env = _admin_cmd(st)
    url = f"http://127.0.0.1:{st.admin_port}"
    log = open(tmp_path / "admin.log", "ab")  # noqa: SIM115 - closed in finally
    first = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    trainer_pid = None
    try:
        _wait_http(url, first)
        with httpx.Client(base_url=url, headers=ADMIN, timeout=30) as api:
            for i in range(6):
                files = {"file": ("s.png", png(80_000 + i), "image/png")}  # six different pictures
                assert api.post("/v1/samples", files=files, data={"label": "ants"}).status_code == 201
            job_id = api.post("/v1/retrain", json={"epochs": 100}).json()["job_id"]
            wait_for(lambda: api.get(f"/v1/jobs/{job_id}").json()["progress"] > 0.05, 30, what="training progress")
        con = sqlite3.connect(st.state_dir / "admin.sqlite3")
        trainer_pid = con.execute("SELECT pid FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        con.close()
        assert trainer_pid and Path(f"/proc/{trainer_pid}").exists()
        first.send_signal(signal.SIGKILL)  # the crash: no clean-up code runs
        first.wait(10)
        # The trainer dies with the admin (PR_SET_PDEATHSIG), so no orphan holds the machine until a restart.
        wait_for(lambda: not _is_running(trainer_pid), 10, what="the trainer to die with the admin")

        second = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_http(url, second)
            with httpx.Client(base_url=url, headers=ADMIN, timeout=30) as api:
                job = api.get(f"/v1/jobs/{job_id}").json()
                assert job["status"] == "failed" and job["reason"].startswith("interrupted:"), job
                assert api.get("/v1/models").json()["default"] == "1"
                assert api.get("/v1/samples/stats").json()["total"] == 6, "every stored sample is still there"
            with httpx.Client(timeout=30) as c:
                r = served.predict(c, "crash")
                assert r.status_code == 200 and r.json()[0]["version"] == "1", "the champion serves"
            con = sqlite3.connect(st.state_dir / "admin.sqlite3")
            paths = [row[0] for row in con.execute("SELECT path FROM samples")]
            con.close()
            assert len(paths) == 6 and all((st.state_dir / p).is_file() for p in paths)
        finally:
            second.terminate()
            assert second.wait(30) == 0, "SIGTERM is a clean stop"
    finally:
        if first.poll() is None:
            first.kill()
        if trainer_pid and _is_running(trainer_pid):
            os.killpg(trainer_pid, signal.SIGKILL)
        log.close()


def _is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"
