"""The client commands on the real loop: a real model served by a real TorchServe, the real admin beside it,
real training jobs, ants/bees photos from ../shared. Upload a folder, retrain through a promotion and through a
rejection (exit status 3), predict through TorchServe with the key found in the state folder, roll back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from graft.serve import _write_endpoints
from tests.support.live import NAME, jpegs, live_loop
from tests.support.paths import REPO

pytestmark = [pytest.mark.slow, pytest.mark.torchserve]
# The commands find the service through the state folder alone: none of the client's variables pass.
ENV = {k: v for k, v in os.environ.items() if k not in ("GRAFT_URL", "GRAFT_TOKEN", "GRAFT_ADMIN_TOKEN",
                                                        "GRAFT_STATE_DIR", "GRAFT_INFERENCE_URL")}  # fmt: skip


def graft(*argv: str) -> tuple[int, str]:
    """``graft ARGV`` as a user runs it (a child process); its exit status and stdout (and stderr on failure)."""
    done = subprocess.run([sys.executable, "-m", "graft.cli", *argv], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=1200, check=False)  # fmt: skip
    return done.returncode, done.stdout + ("" if done.returncode == 0 else done.stderr[-3000:])


def test_upload_retrain_predict_reject_rollback(tmp_path: Path, hymenoptera: Path, mobilenet_weights: Path,
                                                java: str) -> None:  # fmt: skip
    new = tmp_path / "new"
    for label in ("ants", "bees"):
        (new / label).mkdir(parents=True)
        for f in jpegs(hymenoptera, "train", label)[10:22]:
            (new / label / f.name).symlink_to(f)
    # a promotion unless the candidate loses more than 10 points of holdout accuracy
    with live_loop(tmp_path / "loop", hymenoptera, mobilenet_weights, gate_tolerance=0.1) as loop:
        # what graft serve leaves in its state folder: the addresses; the admin token beside them
        _write_endpoints(loop.state, loop.ts, loop.admin)
        (loop.state / "admin.token").write_text(loop.api.headers["Authorization"].split()[1])
        at = ("--state-dir", str(loop.state))
        probe = str(jpegs(hymenoptera, "val", "bees")[-1])

        status, out = graft("upload", str(new), *at, "--json")
        assert status == 0 and json.loads(out)["stored"] == 24, out
        status, out = graft("retrain", "--wait", *at)
        assert status == 0 and out.startswith("promoted: version 2 is in service"), out
        status, out = graft("predict", probe, *at, "--json")
        (answer,) = json.loads(out)
        assert status == 0 and answer["model_version"] == "2", out
        assert answer["predictions"][0]["label"] in ("ants", "bees")

        # a head that learns nothing (lr 1e-9) is far below version 2: rejected, version 2 keeps serving. Averaged
        # with version 2's head (the default) it answers as version 2 does; the refit alone is what rejects it.
        status, out = graft("retrain", "--wait", "--set", "lr=1e-9", "--epochs", "1", *at)
        assert status == 3 and out.startswith("rejected: version 3 was kept out of service"), out
        assert "reason: rejected: before averaging with the champion, the refit alone" in out, out
        assert "significantly worse" in out, out
        assert json.loads(graft("predict", probe, *at, "--json")[1])[0]["model_version"] == "2"

        status, out = graft("rollback", *at)
        assert status == 0 and "version 1 is in service" in out, out
        status, out = graft("predict", probe, *at)
        assert status == 0 and out.startswith(f"{probe}: ") and "(version 1)" in out, out
        status, out = graft("models", *at, "--json")
        assert [m["status"] for m in json.loads(out)["models"]] == ["accepted", "accepted", "rejected"]
        assert json.loads(out)["model_name"] == NAME

    # graft export names the model after the run folder when --name is left out, as graft serve does
    run1, store2 = tmp_path / "loop" / "run1", tmp_path / "s2"
    status, out = graft("export", str(run1), "--model-store", str(store2), "--version", "9")
    assert status == 0 and Path(json.loads(out)["mar"]).name == "run1-9.mar", out
