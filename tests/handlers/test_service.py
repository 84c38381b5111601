"""The handler in-process, on an unpacked .mar, through TorchServe's own Context / RequestProcessor."""

from __future__ import annotations

import base64
import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from graft.inprocess import LocalHandler, unpack_mar
from tests.support.artifacts import MODEL, images, reference_probs, shared_missing_reason
from tests.support.images import solid
from tests.support.paths import HYMENOPTERA, REPO

pytestmark = pytest.mark.slow

if shared_missing_reason():
    pytest.skip(shared_missing_reason() or "", allow_module_level=True)

VAL = images("val", per_class=5, offset=10)


@pytest.fixture(scope="module")
def artifacts(serving_artifacts):
    return serving_artifacts


@pytest.fixture(scope="module")
def unpacked(artifacts, tmp_path_factory):
    _, store = artifacts
    return {v: unpack_mar(store / f"{MODEL}-{v}.mar", tmp_path_factory.mktemp(f"mar{v}")) for v in ("1", "2")}


def _config(model_dir: Path, **handler) -> dict:
    cfg = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    cfg["handler"].update(handler)
    return cfg


@pytest.fixture(scope="module")
def handlers_by_backend(unpacked):
    # Full-resolution decoding here, so the comparison with the in-process model is exact.
    return {
        "onnx": LocalHandler(unpacked["1"], yaml_config=_config(unpacked["1"], fast_decode=False)),
        "torch": LocalHandler(unpacked["2"], yaml_config=_config(unpacked["2"], fast_decode=False)),
    }


def _jpeg_bytes(size=(64, 48)) -> bytes:
    return solid((90, 120, 30), "JPEG", size)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_predictions_match_in_process_model(backend, handlers_by_backend, artifacts):
    run, _ = artifacts
    ref = reference_probs(run, [p for p, _ in VAL])
    out = handlers_by_backend[backend].predict([{"body": p.read_bytes()} for p, _ in VAL])
    assert [r.status for r in out] == [200] * len(VAL)
    for r, probs in zip(out, ref, strict=True):
        top = r.body["predictions"]
        assert top[0]["label"] == ["ants", "bees"][int(probs.argmax())]
        assert top[0]["score"] == pytest.approx(float(probs.max()), abs=1e-4)
        assert r.body["model_name"] == MODEL
        assert r.body["batch_size"] == len(VAL)
        assert r.content_type == "application/json"


def test_onnx_and_torch_backends_agree_on_real_images(handlers_by_backend):
    items = [{"body": p.read_bytes()} for p, _ in images("val", per_class=10)]
    onnx = handlers_by_backend["onnx"].predict(items)
    eager = handlers_by_backend["torch"].predict(items)
    assert [r.body["predictions"][0]["label"] for r in onnx] == [r.body["predictions"][0]["label"] for r in eager]
    # the tiny model is right on most of them: a same-answer check on a broken model would prove little
    labels = [label for _, label in images("val", per_class=10)]
    correct = sum(r.body["predictions"][0]["label"] == lab for r, lab in zip(onnx, labels, strict=True))
    assert correct >= 0.75 * len(labels)


def test_versions_report_themselves(handlers_by_backend):
    item = [{"body": VAL[0][0].read_bytes()}]
    assert handlers_by_backend["onnx"].predict(item)[0].body["model_version"] == "1"
    assert handlers_by_backend["torch"].predict(item)[0].body["model_version"] == "2"


def test_bad_items_fail_alone_in_a_batch(handlers_by_backend):
    good = VAL[0][0].read_bytes()
    truncated = good[: len(good) // 3]
    bomb = io.BytesIO()
    Image.new("1", (9000, 7000)).save(bomb, format="PNG")
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiff, format="TIFF")
    items = [
        {"body": good}, {"body": b"definitely not an image"}, {"body": truncated}, {"body": bomb.getvalue()},
        {"body": {"data": "%%%"}}, {"body": tiff.getvalue()}, {"body": b"x" * 2_000_001}, {"body": good},
    ]
    out = handlers_by_backend["torch"].predict(items)
    expected = [(200, None), (415, "not_an_image"), (400, "truncated_image"), (413, "too_many_pixels"),
                (400, "bad_base64"), (415, "unsupported_format"), (413, "body_too_large"), (200, None)]
    assert [(r.status, r.body.get("reason")) for r in out] == expected
    assert out[0].body["batch_size"] == 2  # only the good images were inferred
    for r in out[1:-1]:
        assert r.body["code"] == r.status and r.body["message"]
    assert out[0].body["predictions"] == out[-1].body["predictions"]


def test_kserve_v1_one_prediction_list_per_instance(handlers_by_backend):
    b64 = [base64.b64encode(p.read_bytes()).decode() for p, _ in VAL[:3]]
    (r,) = handlers_by_backend["onnx"].predict([{"body": {"instances": [{"data": x} for x in b64], "topk": 1}}])
    assert r.status == 200
    assert len(r.body["predictions"]) == 3
    assert all(len(p) == 1 for p in r.body["predictions"])
    singles = handlers_by_backend["onnx"].predict([{"body": {"data": x}} for x in b64])
    assert [p[0]["label"] for p in r.body["predictions"]] == [s.body["predictions"][0]["label"] for s in singles]


def test_kserve_request_fails_whole_when_one_instance_is_bad(handlers_by_backend):
    b64 = base64.b64encode(VAL[0][0].read_bytes()).decode()
    junk = base64.b64encode(b"junk").decode()
    out = handlers_by_backend["onnx"].predict(
        [{"body": {"instances": [{"data": b64}, {"data": junk}]}}, {"body": {"data": b64}}]
    )
    assert out[0].status == 415 and "instances[1]" in out[0].body["message"]
    assert out[1].status == 200 and out[1].body["batch_size"] == 1


def test_topk_capped_and_scores_sum_to_at_most_one(handlers_by_backend):
    items = [{"body": p.read_bytes()} for p, _ in VAL]
    out = handlers_by_backend["torch"].predict(items, [{"X-Topk": "50"}] * len(VAL))
    for r in out:
        scores = [p["score"] for p in r.body["predictions"]]
        assert len(scores) == 2  # capped at the number of classes
        assert sum(scores) <= 1.0
        assert scores == sorted(scores, reverse=True)
    (one,) = handlers_by_backend["torch"].predict([{"body": VAL[0][0].read_bytes()}], [{"X-Topk": "1"}])
    assert len(one.body["predictions"]) == 1


def test_form_content_type_answered_415(handlers_by_backend):
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    (r,) = handlers_by_backend["onnx"].predict([{"hello": b""}], [form])
    assert r.status == 415 and r.body["reason"] == "form_content_type"


def test_grayscale_rgba_cmyk_and_gif_served(handlers_by_backend):
    base = Image.open(VAL[0][0]).convert("RGB")
    bodies = []
    for mode, fmt in (("L", "JPEG"), ("RGBA", "PNG"), ("CMYK", "JPEG"), ("P", "GIF"), ("RGB", "WEBP"), ("RGB", "BMP")):
        buf = io.BytesIO()
        base.convert(mode).save(buf, format=fmt)
        bodies.append({"body": buf.getvalue()})
    out = handlers_by_backend["torch"].predict(bodies)
    assert [r.status for r in out] == [200] * len(bodies)


def test_fast_decode_keeps_the_answer_on_a_large_photo(unpacked):
    big = next(p for p in sorted(HYMENOPTERA.rglob("*.jpg"))
               if min(Image.open(p).size) >= 1024)
    fast = LocalHandler(unpacked["1"])  # the archive's settings: fast_decode on
    slow = LocalHandler(unpacked["1"], yaml_config=_config(unpacked["1"], fast_decode=False))
    a = fast.predict([{"body": big.read_bytes()}])[0].body["predictions"]
    b = slow.predict([{"body": big.read_bytes()}])[0].body["predictions"]
    assert a[0]["label"] == b[0]["label"]
    assert a[0]["score"] == pytest.approx(b[0]["score"], abs=0.05)


def test_metrics_emitted_with_declared_dimensions(handlers_by_backend, caplog):
    caplog.set_level(logging.INFO)
    handlers_by_backend["onnx"].predict([{"body": VAL[0][0].read_bytes()}, {"body": b"nope"}])
    text = caplog.text
    assert "Failed to update metric" not in text
    for name in ("graft_preprocess_seconds", "graft_inference_seconds", "graft_batch_size.images:1",
                 "graft_predictions_total", "Reason:not_an_image"):
        assert name in text, name


def test_load_call_with_none_returns_none_and_serves(unpacked, monkeypatch):
    import handlers.image_classifier as entry
    from graft.inprocess import make_context

    monkeypatch.setattr(entry, "_service", None)
    ctx = make_context(unpacked["1"])
    assert entry.handle(None, ctx) is None
    assert entry._service is not None and entry._service.initialized


def test_entry_module_imports_only_the_standard_library():
    # An ImportError at import time would make TorchServe silently serve its stock handler instead.
    code = "import sys, handlers.image_classifier; print('torch' in sys.modules, 'PIL' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO)
    assert out.stdout.split() == ["False", "False"]


def test_uses_the_gpu_id_torchserve_gives_only_when_cuda_exists():
    from handlers.service import pick_device

    assert pick_device(None) == torch.device("cpu")
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert str(pick_device(0)) == expected
