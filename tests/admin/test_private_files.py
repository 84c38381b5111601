"""The admin's state is its owner's only: the state folder 0700, samples and the database 0600, even under the
usual umask 022 and over a folder an earlier version left at 0755."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx

from admin.server import AdminServer
from tests.admin.test_api import settings
from tests.support.auth import ADMIN
from tests.support.fakes import FakeRollout, fake_evaluate, placeholder_export
from tests.support.images import photo
from tests.support.waiting import wait_ready


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_samples_and_database_are_private(tmp_path: Path, free_port: int) -> None:
    old = os.umask(0o022)
    try:
        state = tmp_path / "state"
        state.mkdir(mode=0o755)
        (state / "admin.sqlite3").touch(mode=0o644)
        st = settings(tmp_path, admin_port=free_port)
        extra = {"evaluate": fake_evaluate, "export": placeholder_export}
        with AdminServer(st, rollout=FakeRollout(), app_kwargs=extra) as server, \
                httpx.Client(base_url=server.url, headers=ADMIN) as c:  # fmt: skip
            wait_ready(c)
            r = c.post("/v1/samples", files={"file": ("a.png", photo(1), "image/png")}, data={"label": "ants"})
            assert r.status_code == 201
            sample = server.app.state.service.samples.path_of(r.json()["id"])
            assert mode(state) == 0o700, oct(mode(state))
            assert mode(sample) == 0o600, oct(mode(sample))
            for db_file in state.glob("admin.sqlite3*"):
                assert mode(db_file) == 0o600, (db_file.name, oct(mode(db_file)))
    finally:
        os.umask(old)
