"""Transparent icons through the real TorchServe: the served answer is what training evaluated in process.

The icons are black shapes on transparent pixels (tests/training/test_transparency.py draws them); the run
records its background in ``model.json`` and the handler composites the uploaded PNG on it, as training did.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from graft.torchserve.launcher import ServeConfig, TorchServe, free_ports
from tests.training.test_transparency import _train, icon_folder

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]


def test_transparent_icons_are_served_as_training_evaluated_them(
    tmp_path: Path, mobilenet_weights: Path, java: str
) -> None:
    from training.evaluate import predict_probabilities
    from training.export import export_run

    data = icon_folder(tmp_path / "icons", transparent=True)
    run = _train(data, tmp_path / "run", mobilenet_weights)
    store = tmp_path / "store"
    export_run(run, store, "icons", "1", model_config={"backend": "onnx"})
    val = sorted((data / "val").rglob("*.png"))
    probs, labels = predict_probabilities(run, val)
    right = sum(labels[max(range(len(r)), key=r.__getitem__)] == p.parent.name for r, p in zip(probs, val, strict=True))
    assert right / len(val) > 0.9, "black-on-transparent icons train well"
    inf, mgmt, met, g1, g2 = free_ports(5)
    ts = TorchServe(ServeConfig(
        model_store=store, workdir=tmp_path / "ts", inference_address=f"http://127.0.0.1:{inf}",
        management_address=f"http://127.0.0.1:{mgmt}", metrics_address=f"http://127.0.0.1:{met}",
        grpc_inference_port=g1, grpc_management_port=g2,
    ))  # fmt: skip
    ts.start()
    try:
        ts.wait_ready(timeout=240)
        headers = {**ts.headers(), "Content-Type": "application/octet-stream"}
        for path, row in zip(val, probs, strict=True):
            r = httpx.post(f"{ts.inference_url}/predictions/icons", content=path.read_bytes(), headers=headers,
                           timeout=60)  # fmt: skip
            assert r.status_code == 200, r.text
            top = r.json()["predictions"][0]
            best = max(range(len(row)), key=row.__getitem__)
            assert top["label"] == labels[best] and top["score"] == pytest.approx(row[best], abs=1e-4), path
    finally:
        ts.stop()
