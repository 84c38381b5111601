"""A real admin over real HTTP, with the job's heavy parts faked at their boundary (the trainer's process and
the model server), as tests/admin/test_jobs.py runs it: the client is what is under test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from admin.runners.local import LocalJobRunner
from admin.server import AdminServer
from admin.settings import AdminSettings
from tests.support.auth import ADMIN_TOKEN, SAMPLES_TOKEN
from tests.support.fakes import FAKE_TRAINER, FakeRollout, fake_evaluate, placeholder_export, write_toy_card
from tests.support.images import image_folder


@dataclass
class Admin:
    url: str
    state: Path
    runner_env: dict[str, str] = field(default_factory=dict)

    def quality(self, q: float) -> None:
        """The quality the next candidate claims (the fake evaluation answers right that often)."""
        self.runner_env["GRAFT_FAKE_QUALITY"] = str(q)


@pytest.fixture
def admin(tmp_path: Path, free_port: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[Admin]:
    for var in ("GRAFT_URL", "GRAFT_TOKEN", "GRAFT_ADMIN_TOKEN", "GRAFT_STATE_DIR", "GRAFT_INFERENCE_URL"):
        monkeypatch.delenv(var, raising=False)
    base, initial, store = tmp_path / "base", tmp_path / "initial", tmp_path / "store"
    image_folder(base, {"train": 3, "val": 6})
    write_toy_card(initial, ["ants", "bees"], 0.6)
    placeholder_export(initial, store, "graft", "1", [])
    values: dict[str, Any] = dict(
        admin_token=ADMIN_TOKEN, samples_token=SAMPLES_TOKEN, admin_port=free_port, state_dir=tmp_path / "state",
        model_store=store, model_name="graft", base_data=base, initial_run=initial, job_poll_s=0.1,
        gate_min_holdout=4,
    )  # fmt: skip
    env: dict[str, str] = {}
    runner = LocalJobRunner(command=FAKE_TRAINER, env=env)
    extra = {"evaluate": fake_evaluate, "export": placeholder_export}
    with AdminServer(AdminSettings(**values), runner=runner, rollout=FakeRollout(), app_kwargs=extra) as server:
        yield Admin(server.url, tmp_path / "state", env)
