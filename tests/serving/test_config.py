"""The launcher's pure parts: generated configuration, extra properties, default-version pins, store scanning,
keys, the ``graft serve`` command line and its refusals before anything starts (no Java needed)."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from graft.core.errors import ServeError
from graft.core.handler_settings import HandlerSettings, model_config_yaml, settings_from_yaml
from graft.core.metrics import SPECS, metrics_config
from graft.serve import config_from_args, register
from graft.torchserve.launcher import ServeConfig, TorchServe, port_in_use, read_keys
from graft.torchserve.properties import PROTECTED_PROPERTIES, config_properties, read_properties
from graft.torchserve.store import Archive, default_versions, latest_versions, scan_store, version_key


def props_of(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def fake_mar(store: Path, name: str, version: str, filename: str | None = None) -> Path:
    path = store / (filename or f"{name}-{version}.mar")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": name, "modelVersion": version}}))
    return path


def test_secure_defaults(tmp_path):
    archives = [Archive(tmp_path / "a-1.mar", "a", "1")]
    p = props_of(config_properties(ServeConfig(model_store=tmp_path), tmp_path / "m.yaml", archives))
    assert p["inference_address"] == "http://127.0.0.1:8080"
    assert p["management_address"] == "http://127.0.0.1:8081"
    assert p["metrics_address"] == "http://127.0.0.1:8082"
    assert p["grpc_inference_address"] == p["grpc_management_address"] == "127.0.0.1"
    assert p["disable_token_authorization"] == "false"
    assert p["enable_model_api"] == "true"
    assert p["metrics_mode"] == "prometheus"
    assert p["install_py_dep_per_model"] == "false"
    assert p["load_models"] == "a-1.mar"
    allowed = re.compile(p["allowed_urls"])
    store = str(tmp_path.resolve())
    assert allowed.fullmatch(f"file://{store}/a-2.mar")
    for url in ("http://evil.example/a.mar", "file:///etc/passwd", f"file://{store}/../x.mar", f"file://{store}x/a.mar"):
        assert not allowed.fullmatch(url), url


def test_no_auth_only_when_asked(tmp_path):
    p = props_of(config_properties(ServeConfig(model_store=tmp_path, auth=False), tmp_path / "m.yaml", []))
    assert p["disable_token_authorization"] == "true"
    assert "load_models" not in p


def test_versions_order_naturally():
    assert sorted(["10", "9", "1.10", "1.9", "2"], key=version_key) == ["1.9", "1.10", "2", "9", "10"]


def test_scan_store_reads_manifests_and_picks_latest(tmp_path):
    fake_mar(tmp_path, "a", "9")
    fake_mar(tmp_path, "a", "10")
    fake_mar(tmp_path, "b", "1.0", filename="renamed.mar")
    (tmp_path / "broken.mar").write_bytes(b"not a zip")
    archives = scan_store(tmp_path)
    assert sorted((a.name, a.version) for a in archives) == [("a", "10"), ("a", "9"), ("b", "1.0")]
    assert latest_versions(archives) == {"a": "10", "b": "1.0"}


def test_read_keys(tmp_path):
    (tmp_path / "key_file.json").write_text(json.dumps({
        "management": {"key": "m", "expiration time": "x"}, "inference": {"key": "i", "expiration time": "x"},
        "API": {"key": "a"},
    }))
    keys = read_keys(tmp_path)
    assert (keys.inference, keys.management, keys.api) == ("i", "m", "a")
    (tmp_path / "key_file.json").write_text("{")
    with pytest.raises(ServeError, match=r"key_file\.json"):
        read_keys(tmp_path)


def test_busy_port_refused_before_starting(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        server = TorchServe(ServeConfig(model_store=tmp_path, inference_address=f"http://127.0.0.1:{port}",
                                        workdir=tmp_path / "w"))
        server.prepare()
        with pytest.raises(ServeError, match=f"127.0.0.1:{port}"):
            server._check_ports()


def test_missing_store_and_java_are_clear_errors(tmp_path):
    with pytest.raises(ServeError, match="not a folder"):
        TorchServe(ServeConfig(model_store=tmp_path / "nope", workdir=tmp_path / "w0")).prepare()
    with pytest.raises(ServeError, match="Java"):
        TorchServe(ServeConfig(model_store=tmp_path, java="no-such-java-binary", workdir=tmp_path / "w")).prepare()


def test_metrics_config_declares_every_handler_metric():
    doc = metrics_config()
    declared = {m["name"]: (kind, m["dimensions"]) for kind, ms in doc["model_metrics"].items() for m in ms}
    for spec in SPECS:
        assert declared[spec.name] == (spec.kind, list(spec.dimensions))
    assert "ts_inference_requests_total" in str(doc["ts_metrics"])  # TorchServe's own metrics kept


def test_serve_subcommand_registered():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--model-store", "s", "--no-auth", "--inference-address", "http://0.0.0.0:9"])
    assert args.func.__name__ == "serve"
    assert args.no_auth and args.inference_address == "http://0.0.0.0:9"
    assert parser.parse_args(["serve", "--model-store", "s"]).no_auth is False


def test_model_config_yaml_round_trip_and_validation():
    text = model_config_yaml(backend="onnx", batch_size=4, max_batch_delay_ms=10, workers=2, topk=3)
    doc = yaml.safe_load(text)
    assert (doc["batchSize"], doc["maxBatchDelay"], doc["minWorkers"], doc["maxWorkers"]) == (4, 10, 2, 2)
    settings = settings_from_yaml(doc)
    assert settings.backend == "onnx" and settings.topk == 3
    assert settings_from_yaml({}) == HandlerSettings()
    from graft.core.errors import ArtifactError

    with pytest.raises(ArtifactError, match="backend"):
        model_config_yaml(backend="tensorrt")
    with pytest.raises(ArtifactError, match="unknown keys"):
        settings_from_yaml({"handler": {"top_k": 3}})
    with pytest.raises(ArtifactError, match="max_image_pixels"):
        settings_from_yaml({"handler": {"max_image_pixels": "lots"}})


# ------------------------------------------------------------------ extra TorchServe properties (--ts-config)

from tests.support.paths import REPO  # noqa: E402

# Keys graft writes that an operator may still set: narrowing the model API, the frontend's body limit.
TUNABLE = {"enable_model_api", "max_request_size"}


def test_ts_config_is_merged_into_config_properties(tmp_path):
    ts = tmp_path / "ts.properties"
    ts.write_text("# comment\n! also a comment\n\njob_queue_size=100\ndefault_workers_per_model : 2\n"
                  "number_of_netty_threads 4\ncors_allowed_origin=https://a.example,\\\n    https://b.example\n"
                  "enable_model_api=false\n")
    extra = read_properties(ts)
    assert extra == {"job_queue_size": "100", "default_workers_per_model": "2", "number_of_netty_threads": "4",
                     "cors_allowed_origin": "https://a.example,https://b.example", "enable_model_api": "false"}
    cfg = ServeConfig(model_store=tmp_path, extra_properties=extra)
    p = props_of(config_properties(cfg, tmp_path / "m.yaml", [Archive(tmp_path / "a-1.mar", "a", "1")]))
    assert p.items() >= extra.items()
    assert p["disable_token_authorization"] == "false" and p["load_models"] == "a-1.mar"  # graft's keys as they were


def test_the_kubernetes_ts_config_is_accepted(tmp_path):
    doc = yaml.safe_load((REPO / "deploy/base/torchserve-configmap.yaml").read_text())
    ts = tmp_path / "config.properties"
    ts.write_text(doc["data"]["config.properties"])
    extra = read_properties(ts)
    assert extra["enable_model_api"] == "false" and "default_workers_per_model" in extra


@pytest.mark.parametrize("key", ["allowed_urls", "model_store", "load_models", "inference_address",
                                 "management_address", "disable_token_authorization", "enable_envvars_config",
                                 "model_snapshot", "use_env_allowed_urls"])
def test_graft_keys_in_ts_config_are_refused(tmp_path, key):
    ts = tmp_path / "ts.properties"
    ts.write_text(f"job_queue_size=10\n{key}=anything\n")
    with pytest.raises(ServeError, match=key) as refused:
        read_properties(ts)
    assert str(refused.value).startswith(f"{ts}: ")
    args = argparse.ArgumentParser()
    register(args.add_subparsers(dest="command"))
    with pytest.raises(ServeError, match=key):
        config_from_args(args.parse_args(["serve", "--model-store", str(tmp_path), "--ts-config", str(ts)]))


def test_protected_properties_cannot_be_smuggled_in_through_the_library(tmp_path):
    for key in PROTECTED_PROPERTIES:
        with pytest.raises(ServeError, match=key):
            ServeConfig(model_store=tmp_path, extra_properties={key: "x"})
    # a line break in a value would add a key of its own
    with pytest.raises(ServeError, match="malformed"):
        ServeConfig(model_store=tmp_path, extra_properties={"job_queue_size": "1\nallowed_urls=.*"})
    with pytest.raises(ServeError, match="malformed"):
        ServeConfig(model_store=tmp_path, extra_properties={"job queue": "1"})


def test_every_key_graft_writes_is_protected_or_deliberately_tunable(tmp_path):
    written = props_of(config_properties(ServeConfig(model_store=tmp_path), tmp_path / "m.yaml",
                                         [Archive(tmp_path / "a-1.mar", "a", "1")]))
    assert set(written) - TUNABLE <= PROTECTED_PROPERTIES


def test_unreadable_ts_config_is_a_clear_error(tmp_path):
    with pytest.raises(ServeError, match="cannot read the TorchServe configuration"):
        read_properties(tmp_path / "missing.properties")


# ------------------------------------------------------------------ default versions (GRAFT_DEFAULT_VERSIONS)


def test_pinned_versions_become_the_defaults_and_the_others_the_newest(tmp_path):
    archives = [Archive(tmp_path / f"{n}-{v}.mar", n, v) for n, v in (("a", "1"), ("a", "2"), ("a", "10"), ("b", "3"))]
    assert default_versions(archives, {}) == {"a": "10", "b": "3"}
    assert default_versions(archives, {"a": "2"}) == {"a": "2", "b": "3"}
    assert default_versions(archives, {"a": "1", "b": "3"}) == {"a": "1", "b": "3"}
    with pytest.raises(ServeError, match=r"a=4"):
        default_versions(archives, {"a": "4"})
    with pytest.raises(ServeError, match=r"c=1"):
        default_versions(archives, {"c": "1"})


def test_pins_come_from_the_environment_and_are_checked_before_java_starts(tmp_path, monkeypatch):
    fake_mar(tmp_path, "a", "9")
    fake_mar(tmp_path, "a", "10")
    fake_mar(tmp_path, "b", "1")
    monkeypatch.setenv("GRAFT_DEFAULT_VERSIONS", " a=9 , broken,")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    cfg = config_from_args(parser.parse_args(["serve", "--model-store", str(tmp_path)]))
    assert cfg.default_versions == {"a": "9"}
    cfg.java, cfg.workdir = sys.executable, tmp_path / "w"  # any existing program passes the Java check
    server = TorchServe(cfg)
    server.prepare()
    assert server.defaults == {"a": "9", "b": "1"}
    cfg.default_versions, cfg.workdir = {"a": "11"}, tmp_path / "w2"
    with pytest.raises(ServeError, match="a=11"):
        TorchServe(cfg).prepare()
    assert not (tmp_path / "w2").exists()


# ------------------------------------------------------------------ graft serve: the admin beside TorchServe


@pytest.fixture
def no_graft_env(monkeypatch):
    for name in [n for n in os.environ if n.startswith("GRAFT_")]:
        monkeypatch.delenv(name)


def test_serve_accepts_the_admin_and_kubernetes_flags():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--model-store", "s", "--ts-config", "/etc/ts.properties", "--no-admin",
                              "--admin-host", "0.0.0.0", "--admin-port", "0", "--admin-state-dir", "st"])
    assert args.ts_config == "/etc/ts.properties" and args.no_admin
    assert (args.admin_host, args.admin_port, args.admin_state_dir) == ("0.0.0.0", 0, Path("st"))
    assert parser.parse_args(["serve", "--model-store", "s"]).no_admin is False


def test_serve_without_an_admin_token_exits_2_and_starts_nothing(tmp_path):
    store, work, state = tmp_path / "store", tmp_path / "work", tmp_path / "state"
    store.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")}
    out = subprocess.run(
        [sys.executable, "-m", "graft.cli", "serve", "--model-store", str(store), "--workdir", str(work),
         "--admin-state-dir", str(state)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no admin token" in lines[0] and "GRAFT_ADMIN_TOKEN" in lines[0], out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert not work.exists() and not state.exists()  # neither TorchServe's work folder nor the admin's SQLite


def test_busy_admin_port_is_refused_before_torchserve_starts(tmp_path, monkeypatch, caplog, no_graft_env):
    from graft.cli import main

    monkeypatch.setenv("GRAFT_ADMIN_TOKEN", "t" * 32)
    monkeypatch.setattr(TorchServe, "start", lambda self: pytest.fail("TorchServe was started"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = main(["serve", "--model-store", str(tmp_path), "--admin-port", str(port),
                     "--admin-state-dir", str(tmp_path / "state")])
    assert code == 2
    assert f"127.0.0.1:{port} is in use" in caplog.text


def test_no_admin_runs_torchserve_alone_without_a_token(tmp_path, monkeypatch, no_graft_env):
    import graft.serve as serving
    from graft.cli import main

    calls = []
    monkeypatch.setattr(serving, "run_foreground", lambda server, timeout, admin=None: calls.append(admin) or 0)
    assert main(["serve", "--model-store", str(tmp_path), "--no-admin"]) == 0
    assert calls == [None]


def test_the_admin_is_pointed_at_this_torchserve(tmp_path, monkeypatch, no_graft_env):
    from admin.settings import load_settings
    from graft.serve import admin_settings_for

    monkeypatch.setenv("GRAFT_TORCHSERVE_KEY_FILE", "/somewhere/else/key_file.json")
    settings = load_settings(admin_token="t" * 32)
    for auth in (True, False):
        server = TorchServe(ServeConfig(model_store=tmp_path, auth=auth, management_address="http://127.0.0.1:9181/",
                                        inference_address="http://127.0.0.1:9180", workdir=tmp_path / "w"))
        pointed = admin_settings_for(settings, server)
        assert pointed.torchserve_management_url == "http://127.0.0.1:9181"
        assert pointed.torchserve_inference_url == "http://127.0.0.1:9180"
        assert pointed.torchserve_key_file == (server.key_file if auth else None)
        assert pointed.resolved_admin_token() == "t" * 32


@pytest.mark.parametrize("runtime", ["torchserve", "kserve"])
def test_a_second_serve_on_a_state_directory_in_use_is_refused_before_anything_starts(
    tmp_path, monkeypatch, caplog, no_graft_env, runtime
):
    from admin.statelock import StateLock
    from graft.cli import main
    from graft.serve_kserve import KServeRuntime

    monkeypatch.setenv("GRAFT_ADMIN_TOKEN", "t" * 32)
    monkeypatch.setattr(TorchServe, "start", lambda self: pytest.fail("TorchServe was started"))
    monkeypatch.setattr(KServeRuntime, "start", lambda self: pytest.fail("the KServe runtime was started"))
    monkeypatch.setattr("graft.serve.check_torchserve_ports", lambda *a: pytest.fail("looked for an old TorchServe"))
    state, store = tmp_path / "state", tmp_path / "store"
    store.mkdir()
    with StateLock(state):  # the first admin, still running
        before = sorted(p.name for p in state.iterdir())
        code = main(["serve", "--runtime", runtime, "--model-store", str(store), "--admin-port", "0",
                     "--admin-state-dir", str(state)])  # fmt: skip
        assert sorted(p.name for p in state.iterdir()) == before  # no registry, no store arranged
    assert code == 2
    assert f"another admin process (pid {os.getpid()}) is using the state directory {state}" in caplog.text
