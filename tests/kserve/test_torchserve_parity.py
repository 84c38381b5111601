"""The real TorchServe and graft's KServe runtime, serving the same archive, answer bench/_hostile.py's
inputs (about 40 kinds of malformed request, and valid JPEGs) with the same status code.

TorchServe gets each body as sent, on ``/predictions/NAME``. The KServe runtime gets the same bytes on
the route a client of it would use: image bytes (anything not JSON) as one OIP v2 BYTES element in
the binary extension, JSON documents on KServe v1 as they are.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench._hostile import Case, inference_cases
from graft.torchserve.launcher import ServeConfig, TorchServe, free_ports
from tests.kserve.runtime import Runtime, kserve_runtime
from tests.support.artifacts import MODEL, images, shared_missing_reason

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]

if shutil.which("java") is None:
    pytest.skip("java not found: TorchServe's frontend needs a Java 17 runtime ('make setup')", allow_module_level=True)
if shared_missing_reason():
    pytest.skip(shared_missing_reason() or "", allow_module_level=True)

CASES = inference_cases([p.read_bytes() for p, _ in images("val", 1)])


@pytest.fixture(scope="module")
def torchserve(serving_artifacts: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    _, store = serving_artifacts
    inf, mgmt, met, g1, g2 = free_ports(5)
    cfg = ServeConfig(model_store=store, workdir=tmp_path_factory.mktemp("ts"),
                      inference_address=f"http://127.0.0.1:{inf}", management_address=f"http://127.0.0.1:{mgmt}",
                      metrics_address=f"http://127.0.0.1:{met}", grpc_inference_port=g1, grpc_management_port=g2,
                      default_versions={MODEL: "1"}, only_versions={MODEL: ["1"]})  # fmt: skip
    with TorchServe(cfg) as ts:
        ts.wait_ready(timeout=300)
        yield ts


@pytest.fixture(scope="module")
def runtime(serving_artifacts: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    _, store = serving_artifacts
    with kserve_runtime(store, tmp_path_factory.mktemp("kserve"), "--only", f"{MODEL}=1") as rt:
        yield rt


def _binary_v2(payload: bytes) -> tuple[bytes, dict[str, str]]:
    tensor = struct.pack("<I", len(payload)) + payload
    header = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(tensor)}}]}).encode()  # fmt: skip
    return header + tensor, {"Inference-Header-Content-Length": str(len(header)),
                             "Content-Type": "application/octet-stream"}  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_same_status_from_both_runtimes(case: Case, torchserve: TorchServe, runtime: Runtime) -> None:
    ts = httpx.post(f"{torchserve.inference_url}/predictions/{MODEL}", content=case.body,
                    headers={**torchserve.headers(), **case.headers}, timeout=60)  # fmt: skip
    if case.headers.get("Content-Type") == "application/json":
        ks = httpx.post(f"{runtime.url}/v1/models/{MODEL}:predict", content=case.body,
                        headers={**runtime.headers(), **case.headers}, timeout=60)  # fmt: skip
    else:
        content, headers = _binary_v2(case.body)
        extra = {k: v for k, v in case.headers.items() if k.lower() != "content-type"}  # X-Topk travels as is
        ks = httpx.post(f"{runtime.url}/v2/models/{MODEL}/infer", content=content,
                        headers={**runtime.headers(), **headers, **extra}, timeout=60)  # fmt: skip
    where = f"{case.name}: TorchServe {ts.status_code} {ts.text[:200]!r}, KServe {ks.status_code} {ks.text[:200]!r}"
    assert ts.status_code < 500 and ks.status_code < 500, where
    assert (ts.status_code == 200) == (case.expect == "200"), where
    assert ks.status_code == ts.status_code, where
