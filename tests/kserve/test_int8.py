"""graft's KServe runtime serving an archive exported with --quantize int8: the answers are the INT8 model's.

The same archive the real TorchServe serves in tests/serving/test_torchserve_int8.py, over real HTTP
(KServe v1 and OIP v2), compared with graft's handler on that archive in this process.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from graft.inprocess import LocalHandler, unpack_mar
from tests.kserve.runtime import kserve_runtime
from tests.support.artifacts import INT8_MODEL, images, shared_missing_reason

pytestmark = [pytest.mark.slow]

if shared_missing_reason():
    pytest.skip(shared_missing_reason() or "", allow_module_level=True)


def test_the_kserve_runtime_answers_with_the_int8_model(int8_artifacts: tuple[Path, Path], tmp_path: Path) -> None:
    _, store = int8_artifacts
    paths = [p for p, _ in images("val", per_class=4, offset=30)]
    local = LocalHandler(unpack_mar(store / f"{INT8_MODEL}-1.mar", tmp_path / "unpacked"))
    assert local.service.backend.name == "onnx-int8"
    expected = [r.body["predictions"] for r in local.predict([{"body": p.read_bytes()} for p in paths])]
    with kserve_runtime(store, tmp_path / "kserve") as rt, rt.client() as c:
        for path, want in zip(paths, expected, strict=True):
            data = base64.b64encode(path.read_bytes()).decode()
            r1 = c.post(f"/v1/models/{INT8_MODEL}:predict", json={"data": data})
            assert r1.status_code == 200, r1.text
            got = r1.json()["predictions"]
            assert got[0]["label"] == want[0]["label"], path
            assert got[0]["score"] == pytest.approx(want[0]["score"], abs=1e-3)
            tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [data]}
            r2 = c.post(f"/v2/models/{INT8_MODEL}/infer", json={"inputs": [tensor]})
            assert r2.status_code == 200, r2.text
            outputs = {o["name"]: o["data"] for o in r2.json()["outputs"]}
            assert outputs["labels"][0] == want[0]["label"]
            assert outputs["probabilities"][0] == pytest.approx(want[0]["score"], abs=1e-3)
        metrics = c.get("/metrics").text
    # The runtime ran the INT8 backend (the handler's inference histogram names it).
    assert 'Backend="onnx-int8"' in metrics, [x for x in metrics.splitlines() if "graft_inference" in x][:5]
