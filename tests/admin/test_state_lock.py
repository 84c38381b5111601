"""One admin per state directory: a second admin refuses to start instead of failing the first one's running job
(and killing its trainer), and the lock goes with its process, however that ends (real processes, real HTTP)."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from admin.runners.local import LocalJobRunner
from admin.server import AdminServer
from admin.statelock import StateLock
from graft.core.errors import ConfigError
from tests.admin.test_adoption import settings, toy_archive
from tests.support.auth import ADMIN
from tests.support.fakes import FAKE_TRAINER, FakeRollout, fake_evaluate, placeholder_export
from tests.support.images import image_folder, png
from tests.support.waiting import wait_for, wait_job, wait_ready

EXTRA = {"evaluate": fake_evaluate, "export": placeholder_export}


def _admin(tmp_path: Path, epoch_s: float = 0.05) -> AdminServer:
    runner = LocalJobRunner(command=FAKE_TRAINER, env={"GRAFT_FAKE_QUALITY": "0.9", "GRAFT_FAKE_EPOCH_S": str(epoch_s)})
    return AdminServer(settings(tmp_path), rollout=FakeRollout(), runner=runner, app_kwargs=EXTRA)


def test_a_second_admin_on_the_state_directory_leaves_the_first_ones_job_alone(tmp_path: Path) -> None:
    toy_archive(tmp_path, "ab", "1", dataset=image_folder(tmp_path / "base", {"train": 3, "val": 2}))
    first = _admin(tmp_path, epoch_s=0.5).start()
    try:
        with httpx.Client(base_url=first.url, headers=ADMIN, timeout=30) as api:
            wait_ready(api)
            for i in range(12):
                files = {"file": (f"s{i}.png", png(700 + i), "image/png")}
                label = {"label": "ants" if i % 2 else "bees"}
                assert api.post("/v1/samples", files=files, data=label).status_code == 201
            job_id = api.post("/v1/retrain").json()["job_id"]
            wait_for(lambda: api.get(f"/v1/jobs/{job_id}").json()["status"] == "running", 30, 0.05, "the job to run")

            with pytest.raises(ConfigError) as refused:
                _admin(tmp_path)
            message = str(refused.value)
            assert f"pid {os.getpid()}" in message and str(tmp_path / "state") in message
            assert "--admin-state-dir" in message

            # Without the lock the second admin's start-up would have failed this job as interrupted.
            job = wait_job(api, job_id)
            assert job["status"] == "succeeded", job["reason"]
    finally:
        first.stop()
    second = _admin(tmp_path).start()  # the first stopped: its lock went with it
    second.stop()


def test_the_lock_goes_with_a_killed_process_and_is_not_inherited(tmp_path: Path) -> None:
    state = tmp_path / "state"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from admin.statelock import StateLock; "
         f"StateLock({str(state)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            StateLock(state).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up code runs
        holder.wait(10)
    lock = StateLock(state).acquire()  # no stale lock to remove by hand
    assert lock.held
    # The admin's children (trainers, job evaluations) do not inherit the lock: it is free once the admin lets go,
    # even for a child started with every inheritable descriptor kept open and still running. (For the moment
    # between a fork and its exec, a child forked by any thread has every descriptor: hence a few tries.)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], close_fds=False)
    try:
        lock.release()
        wait_for(lambda: _free(state), 5, 0.05, "the lock to be free while the admin's child runs")
        assert child.poll() is None
    finally:
        child.terminate()
        child.wait(10)


def _free(state: Path) -> bool:
    try:
        StateLock(state).acquire().release()
    except ConfigError:
        return False
    return True


def test_a_volume_without_locks_warns_and_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr("admin.statelock.fcntl.flock", no_locks)  # the OS call: what such a volume answers
    with caplog.at_level(logging.WARNING, logger="admin.statelock"), StateLock(tmp_path / "state") as lock:
        assert lock.held
    assert "nothing stops a second admin on this state directory" in caplog.text
    assert not lock.held
