"""graft's KServe runtime over real HTTP and gRPC, serving the tiny real ants/bees archives.

v1 and OIP v2 answers agree with the model, bad images get their own 4xx, tokens are enforced before
bodies are read, concurrent requests are batched within the archive's batchSize, and metrics reach
/metrics. (tritonclient's gRPC client runs here; kserve itself only in the runtime's process.)
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.kserve.runtime import Runtime, kserve_runtime
from tests.support.artifacts import images, reference_probs
from tests.support.images import solid

pytestmark = [pytest.mark.slow]

MODEL = "antsbees"


@pytest.fixture(scope="module")
def runtime(serving_artifacts: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    _, store = serving_artifacts
    # Version 1 (ONNX Runtime) answers the plain name; version 2 (PyTorch) is loaded beside it.
    with kserve_runtime(store, tmp_path_factory.mktemp("kserve"), "--default", f"{MODEL}=1",
                        "--max-request-mb", "3") as rt:  # fmt: skip
        yield rt


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _v2(images_: list[bytes], **parameters: object) -> dict[str, object]:
    tensor = {"name": "image", "shape": [len(images_)], "datatype": "BYTES", "data": [_b64(x) for x in images_]}
    return {"inputs": [tensor], **({"parameters": parameters} if parameters else {})}


def test_v1_and_v2_answer_like_the_model(runtime: Runtime, serving_artifacts: tuple[Path, Path]) -> None:
    run, _ = serving_artifacts
    pairs = images("val", 2)
    paths = [p for p, _ in pairs]
    ref = reference_probs(run, paths)
    with runtime.client() as c:
        r1 = c.post(f"/v1/models/{MODEL}:predict", json={"instances": [{"data": _b64(p.read_bytes())} for p in paths]})
        assert r1.status_code == 200, r1.text
        body = r1.json()
        assert body["model_version"] == "1"
        r2 = c.post(f"/v2/models/{MODEL}/infer", json=_v2([p.read_bytes() for p in paths], topk=2))
        assert r2.status_code == 200, r2.text
    outputs = {o["name"]: o for o in r2.json()["outputs"]}
    assert outputs["labels"]["datatype"] == "BYTES" and outputs["labels"]["shape"] == [len(paths), 2]
    assert outputs["probabilities"]["datatype"] == "FP32"
    labels, probs = outputs["labels"]["data"], outputs["probabilities"]["data"]
    for i, row in enumerate(ref):
        top = int(row.argmax())
        assert body["predictions"][i][0]["label"] == ["ants", "bees"][top]
        assert labels[2 * i] == ["ants", "bees"][top]
        assert probs[2 * i] == pytest.approx(float(row[top]), abs=1e-3)


def test_versions_are_models_of_their_own_and_reachable_by_the_v2_version_path(runtime: Runtime) -> None:
    jpeg = images("val", 1)[0][0].read_bytes()
    with runtime.client() as c:
        for path, version in ((f"/v1/models/{MODEL}-v2:predict", "2"), (f"/v1/models/{MODEL}:predict", "1")):
            r = c.post(path, json={"data": _b64(jpeg)})
            assert r.status_code == 200 and r.json()["model_version"] == version, r.text
        r = c.post(f"/v2/models/{MODEL}/versions/2/infer", json=_v2([jpeg]))
        assert r.status_code == 200 and r.json()["model_version"] == "2", r.text
        meta = c.get(f"/v2/models/{MODEL}").json()
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]


@pytest.mark.parametrize(
    ("payload", "status", "reason"),
    [
        (b"hello", 415, "not_an_image"),
        (solid(fmt="JPEG")[:40], 400, "truncated_image"),
    ],
)
def test_a_bad_image_gets_its_own_4xx_naming_the_element(runtime: Runtime, payload: bytes, status: int,
                                                         reason: str) -> None:  # fmt: skip
    good = images("val", 1)[0][0].read_bytes()
    with runtime.client() as c:
        r = c.post(f"/v2/models/{MODEL}/infer", json=_v2([good, payload]))
        assert r.status_code == status, r.text
        assert r.json()["reason"] == reason and r.json()["message"].startswith("inputs[0][1]")
        r = c.post(f"/v1/models/{MODEL}:predict", json={"instances": [{"data": _b64(good)}, {"data": _b64(payload)}]})
        assert r.status_code == status and "instances[1]" in r.json()["message"], r.text
        # The next request is answered normally: one bad item never breaks the model.
        assert c.post(f"/v1/models/{MODEL}:predict", json={"data": _b64(good)}).status_code == 200


def test_hostile_requests_are_4xx_never_5xx(runtime: Runtime) -> None:
    fp32 = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}
    not_b64 = {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%not base64"]}
    with runtime.client() as c:
        cases = [
            c.post(f"/v2/models/{MODEL}/infer", json={"inputs": [fp32]}),
            c.post(f"/v2/models/{MODEL}/infer", json={"inputs": [not_b64]}),
            c.post(f"/v2/models/{MODEL}/infer", content=b"{", headers={"inference-header-content-length": "900"}),
            c.post(f"/v2/models/{MODEL}/infer", json=_v2([b"x"], topk="many")),
            c.post(f"/v1/models/{MODEL}:predict", json={"instances": "nope"}),
            c.post(f"/v1/models/{MODEL}:predict", content=b"{not json", headers={"content-type": "application/json"}),
        ]
        for r in cases:
            assert 400 <= r.status_code < 500, (r.request.url, r.status_code, r.text)
        big = c.post(f"/v1/models/{MODEL}:predict", content=b"x" * (4 * 2**20),
                     headers={"content-type": "application/json"})  # fmt: skip
        assert big.status_code == 413 and big.json()["reason"] == "body_too_large"


def test_tokens_are_checked_before_anything_else(runtime: Runtime) -> None:
    jpeg = images("val", 1)[0][0].read_bytes()
    body = {"data": _b64(jpeg)}
    with httpx.Client(base_url=runtime.url, timeout=30) as c:
        assert c.post(f"/v1/models/{MODEL}:predict", json=body).status_code == 401
        wrong = {"Authorization": "Bearer not-the-key"}
        assert c.post(f"/v1/models/{MODEL}:predict", json=body, headers=wrong).status_code == 401
        assert c.post(f"/v2/models/{MODEL}/infer", json=_v2([jpeg]), headers=wrong).status_code == 401
        # The inference key neither manages versions nor unloads models through KServe's repository API.
        inference = runtime.headers()
        assert c.get("/graft/v1/models", headers=inference).status_code == 401
        assert c.post(f"/v2/repository/models/{MODEL}/unload", headers=inference).status_code == 401
        assert c.get("/graft/v1/models", headers=runtime.headers(management=True)).status_code == 200
        # Probes and Prometheus need no key.
        assert c.get("/v2/health/ready").status_code == 200 and c.get("/metrics").status_code == 200
        assert c.post(f"/v1/models/{MODEL}:predict", json=body, headers=inference).status_code == 200


def test_concurrent_requests_are_batched_within_the_archive_batch_size(runtime: Runtime) -> None:
    jpeg = images("val", 1)[0][0].read_bytes()
    with runtime.client() as c, ThreadPoolExecutor(16) as pool:
        # The archives say batchSize 8, maxBatchDelay 50 ms (tests/support/artifacts.py).
        answers = list(pool.map(lambda _: c.post(f"/v1/models/{MODEL}:predict", json={"data": _b64(jpeg)}), range(32)))
        metrics = c.get("/metrics").text
    assert all(r.status_code == 200 for r in answers)
    sizes = [r.json()["batch_size"] for r in answers]
    assert max(sizes) > 1, sizes  # requests did share a batch
    assert max(sizes) <= 8, sizes  # and never beyond the archive's batch size
    assert 'graft_batch_size_count{ModelName="antsbees",ModelVersion="1"}' in metrics
    assert 'graft_predictions_total{Label="bees",ModelName="antsbees",ModelVersion="1"}' in metrics or \
        'graft_predictions_total{ModelName="antsbees",ModelVersion="1",Label="bees"}' in metrics


def test_grpc_with_tritonclient(runtime: Runtime) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    paths = [p for p, _ in images("val", 1)]
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{runtime.grpc_port}")
    assert client.is_server_ready()  # open, like the HTTP probes
    data = np.array([p.read_bytes() for p in paths], dtype=np.object_)
    inp = grpcclient.InferInput("image", [len(paths)], "BYTES")
    inp.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException, match=r"(?i)unauthenticated|authorization"):
        client.infer(MODEL, [inp])
    auth = {"authorization": f"Bearer {runtime.inference_key}"}
    result = client.infer(MODEL, [inp], headers=auth)
    labels = result.as_numpy("labels")
    probs = result.as_numpy("probabilities")
    assert labels.shape[0] == len(paths) and probs.shape == labels.shape
    assert labels[0][0].decode() in ("ants", "bees") and 0.5 <= float(probs[0][0]) <= 1.0
    bad = grpcclient.InferInput("image", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"hello"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="415 not_an_image"):
        client.infer(MODEL, [bad], headers=auth)
    client.close()


def test_http_with_tritonclient(runtime: Runtime) -> None:
    import numpy as np
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    paths = [p for p, _ in images("val", 2)]
    client = httpclient.InferenceServerClient(runtime.url.removeprefix("http://"))
    auth = runtime.headers()
    assert client.is_model_ready(MODEL, headers=auth)
    inp = httpclient.InferInput("image", [len(paths)], "BYTES")
    inp.set_data_from_numpy(np.array([p.read_bytes() for p in paths], dtype=np.object_), binary_data=True)
    result = client.infer(MODEL, [inp], headers=auth)
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("labels")[:, 0]]
    assert set(labels) <= {"ants", "bees"} and len(labels) == len(paths)
    assert result.as_numpy("probabilities").shape[0] == len(paths)
    bad = httpclient.InferInput("image", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"hello"], dtype=np.object_), binary_data=True)
    with pytest.raises(InferenceServerException, match="not an image") as e:
        client.infer(MODEL, [bad], headers=auth)
    assert e.value.status() == "415"
    client.close()


def test_kserve_inference_rest_client(runtime: Runtime) -> None:
    import json
    import subprocess
    import sys

    path = images("val", 1)[1][0]
    with runtime.client() as c:
        v1 = c.post(f"/v1/models/{MODEL}:predict", json={"data": _b64(path.read_bytes()), "topk": 2}).json()
    script = Path(__file__).with_name("kserve_client_check.py")
    done = subprocess.run([sys.executable, str(script), runtime.url, MODEL, runtime.inference_key, str(path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    # (KServe's client drops the response's model_version when it parses the answer; the name stays.)
    assert answer["model_name"] == MODEL
    # The same answer as the v1 route gives for the same image.
    assert answer["labels"][0] == [p["label"] for p in v1["predictions"]]
    assert answer["probabilities"][0] == pytest.approx([p["score"] for p in v1["predictions"]], abs=1e-5)


def _binary_v2(payload: bytes) -> tuple[bytes, dict[str, str]]:
    """An OIP v2 request in the binary extension's framing: one BYTES element carrying ``payload`` as is."""
    import json
    import struct

    tensor = struct.pack("<I", len(payload)) + payload
    header = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(tensor)}}]}).encode()  # fmt: skip
    return header + tensor, {"Inference-Header-Content-Length": str(len(header)),
                             "Content-Type": "application/octet-stream"}  # fmt: skip


def test_parity_with_the_handler_on_hostile_inputs(runtime: Runtime, serving_artifacts: tuple[Path, Path],
                                                   tmp_path: Path) -> None:  # fmt: skip
    """bench/_hostile.py's cases: what graft's handler answers in-process (as under TorchServe), the runtime
    answers too. Image bytes go as one binary OIP v2 element (same status and reason); JSON bodies go to
    KServe v1 as they are (same status where KServe hands the document on; always a 4xx)."""
    import json

    from bench._hostile import inference_cases
    from graft.inprocess import LocalHandler, unpack_mar

    _, store = serving_artifacts
    local = LocalHandler(unpack_mar(store / f"{MODEL}-1.mar", tmp_path / "unpacked"))
    valid = [p.read_bytes() for p, _ in images("val", 1)]
    with runtime.client() as c:
        for case in inference_cases(valid):
            if "X-Topk" in case.headers:
                continue  # a header option of the raw-body route; v2 takes topk as a parameter
            json_body = case.headers.get("Content-Type") == "application/json"
            # A v2 element is bytes whatever the HTTP Content-Type: the handler sees them as the runtime passes them.
            sent = case.headers if json_body else {"Content-Type": "application/octet-stream"}
            (want,) = local.predict([{"body": case.body}], [{k.lower(): v for k, v in sent.items()}])
            if json_body:
                r = c.post(f"/v1/models/{MODEL}:predict", content=case.body, headers=case.headers)
            else:
                content, headers = _binary_v2(case.body)
                r = c.post(f"/v2/models/{MODEL}/infer", content=content, headers=headers)
            where = f"{case.name}: runtime {r.status_code} {r.text[:200]}, handler {want.status} {want.body}"
            assert r.status_code < 500, where
            assert (r.status_code == 200) == (case.expect == "200"), where
            try:
                document = json.loads(case.body) if json_body else None
            except (ValueError, RecursionError):
                document = None
            if not json_body or isinstance(document, dict):
                assert r.status_code == want.status, where
                if want.status != 200:
                    body = r.json()
                    # graft's body with the handler's reason, or KServe's own validation ({"error": ...}).
                    assert body.get("reason", want.body["reason"]) == want.body["reason"] and "error" in body, where
