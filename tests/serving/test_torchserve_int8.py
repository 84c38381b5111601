"""The real TorchServe serving an archive exported with --quantize int8: the answers are the INT8 model's."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from graft.inprocess import LocalHandler, unpack_mar
from graft.torchserve.launcher import ServeConfig, TorchServe, free_ports
from tests.support.artifacts import INT8_MODEL, images, shared_missing_reason

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]

if shutil.which("java") is None:
    pytest.skip("java not found: TorchServe's frontend needs a Java 17 runtime", allow_module_level=True)
if shared_missing_reason():
    pytest.skip(shared_missing_reason() or "", allow_module_level=True)


def config(store: Path, workdir: Path) -> ServeConfig:
    inf, mgmt, met, g1, g2 = free_ports(5)
    return ServeConfig(
        model_store=store, workdir=workdir, inference_address=f"http://127.0.0.1:{inf}",
        management_address=f"http://127.0.0.1:{mgmt}", metrics_address=f"http://127.0.0.1:{met}",
        grpc_inference_port=g1, grpc_management_port=g2,
    )  # fmt: skip


def test_torchserve_answers_with_the_int8_model(int8_artifacts: tuple[Path, Path], tmp_path: Path) -> None:
    _, store = int8_artifacts
    paths = [p for p, _ in images("val", per_class=4, offset=30)]
    local = LocalHandler(unpack_mar(store / f"{INT8_MODEL}-1.mar", tmp_path / "unpacked"))
    assert local.service.backend.name == "onnx-int8"
    expected = [r.body["predictions"] for r in local.predict([{"body": p.read_bytes()} for p in paths])]
    ts = TorchServe(config(store, tmp_path / "ts"))
    ts.start()
    try:
        ts.wait_ready(timeout=240)
        headers = {**ts.headers(), "Content-Type": "image/jpeg"}
        for path, want in zip(paths, expected, strict=True):
            r = httpx.post(f"{ts.inference_url}/predictions/{INT8_MODEL}", content=path.read_bytes(), headers=headers,
                           timeout=60)  # fmt: skip
            assert r.status_code == 200, r.text
            got = r.json()["predictions"]
            assert got[0]["label"] == want[0]["label"]
            assert got[0]["score"] == pytest.approx(want[0]["score"], abs=1e-3)
        metrics = httpx.get(f"{ts.metrics_url}/metrics", timeout=30).text
        assert 'Backend="onnx-int8"' in metrics  # the worker ran the INT8 backend
    finally:
        ts.stop()
