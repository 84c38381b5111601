"""The launcher's pure parts: generated configuration, store scanning, keys, the CLI (no Java needed)."""

from __future__ import annotations

import argparse
import json
import re
import socket
import zipfile
from pathlib import Path

import pytest
import yaml

from graft.errors import ServeError
from graft.serving import (
    Archive,
    ServeConfig,
    TorchServe,
    config_properties,
    latest_versions,
    port_in_use,
    read_keys,
    register,
    scan_store,
    version_key,
)
from handlers.config import HandlerSettings, model_config_yaml, settings_from_yaml
from handlers.metrics import SPECS, metrics_config


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
    from graft.errors import ArtifactError

    with pytest.raises(ArtifactError, match="backend"):
        model_config_yaml(backend="tensorrt")
    with pytest.raises(ArtifactError, match="unknown keys"):
        settings_from_yaml({"handler": {"top_k": 3}})
    with pytest.raises(ArtifactError, match="max_image_pixels"):
        settings_from_yaml({"handler": {"max_image_pixels": "lots"}})
