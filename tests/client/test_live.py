"""The client commands on the real loop: a real model served by a real TorchServe, the real admin beside it,
real training jobs, ants/bees photos from ../shared. Upload a folder, retrain through a promotion and through a
rejection (exit status 3), predict through TorchServe with the key found in the state folder, roll back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graft.cli import main
from graft.serve import _write_endpoints
from tests.support.live import NAME, jpegs, live_loop
from tests.support.live import graft as graft_cli

pytestmark = [pytest.mark.slow, pytest.mark.torchserve]


def graft(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out + ("" if status == 0 else err)


def test_upload_retrain_predict_reject_rollback(tmp_path: Path, hymenoptera: Path, mobilenet_weights: Path, java: str,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    for var in ("GRAFT_URL", "GRAFT_TOKEN", "GRAFT_ADMIN_TOKEN", "GRAFT_INFERENCE_URL"):
        monkeypatch.delenv(var, raising=False)
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

        status, out = graft(capsys, "upload", str(new), *at, "--json")
        assert status == 0 and json.loads(out)["stored"] == 24, out
        status, out = graft(capsys, "retrain", "--wait", *at)
        assert status == 0 and out.startswith("promoted: version 2 is in service"), out
        status, out = graft(capsys, "predict", probe, *at, "--json")
        (answer,) = json.loads(out)
        assert status == 0 and answer["model_version"] == "2", out
        assert answer["predictions"][0]["label"] in ("ants", "bees")

        # a head that learns nothing (lr 1e-9) is far below version 2: rejected, version 2 keeps serving
        status, out = graft(capsys, "retrain", "--wait", "--set", "lr=1e-9", "--epochs", "1", *at)
        assert status == 3 and out.startswith("rejected: version 3 was kept out of service"), out
        assert "reason: rejected: candidate" in out, out
        assert json.loads(graft(capsys, "predict", probe, *at, "--json")[1])[0]["model_version"] == "2"

        status, out = graft(capsys, "rollback", *at)
        assert status == 0 and "version 1 is in service" in out, out
        status, out = graft(capsys, "predict", probe, *at)
        assert status == 0 and out.startswith(f"{probe}: ") and "(version 1)" in out, out
        status, out = graft(capsys, "models", *at, "--json")
        assert [m["status"] for m in json.loads(out)["models"]] == ["accepted", "accepted", "rejected"]
        assert json.loads(out)["model_name"] == NAME

    # graft export names the model after the run folder when --name is left out, as graft serve does (in a child
    # process, as the suite exports: run in this process, the test once ended pytest with a C++ abort at exit)
    graft_cli("export", str(tmp_path / "loop" / "run1"), "--model-store", str(tmp_path / "s2"), "--version", "9")
    assert [p.name for p in (tmp_path / "s2").glob("*.mar")] == ["run1-9.mar"]
