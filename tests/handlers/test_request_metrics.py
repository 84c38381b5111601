"""The handler's request and worker-start counters (deploy/monitoring/ reads them), on the real handler and model:
through the KServe runtime's Prometheus collectors and through TorchServe's metrics cache (its log lines)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from graft.inprocess import LocalHandler, unpack_mar
from graft.kserve.engine import ArchiveEngine
from tests.support.artifacts import MODEL, images, shared_missing_reason

pytestmark = pytest.mark.slow

if shared_missing_reason():
    pytest.skip(shared_missing_reason() or "", allow_module_level=True)

GOOD = images("val", per_class=1)[0][0]


@pytest.fixture(scope="module")
def model_dir(serving_artifacts: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, store = serving_artifacts
    return unpack_mar(store / f"{MODEL}-1.mar", tmp_path_factory.mktemp("mar1"))


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"ModelName": MODEL, "ModelVersion": "1", **labels}) or 0.0


def test_requests_are_counted_by_status_class_and_a_failed_batch_as_5xx(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = _value("graft_worker_starts_total", Backend="onnx")
    engine = ArchiveEngine(model_dir)
    assert _value("graft_worker_starts_total", Backend="onnx") == starts + 1
    before = {s: _value("graft_requests_total", Status=s) for s in ("2xx", "4xx", "5xx")}
    answers = engine.predict([{"body": GOOD.read_bytes()}, {"body": b"nope"}, {"body": GOOD.read_bytes()}],
                             [{}, {}, {}])  # fmt: skip
    assert [a.status for a in answers] == [200, 415, 200]
    assert _value("graft_requests_total", Status="2xx") == before["2xx"] + 2
    assert _value("graft_requests_total", Status="4xx") == before["4xx"] + 1

    def broken(batch: object) -> object:
        raise RuntimeError("the backend died")

    monkeypatch.setattr(engine.service.backend, "logits", broken)
    with pytest.raises(RuntimeError):
        engine.predict([{"body": GOOD.read_bytes()}, {"body": GOOD.read_bytes()}], [{}, {}])
    assert _value("graft_requests_total", Status="5xx") == before["5xx"] + 2
    assert _value("graft_requests_total", Status="2xx") == before["2xx"] + 2


def test_torchserve_metrics_cache_gets_the_new_counters(model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    handler = LocalHandler(model_dir)
    assert "graft_worker_starts_total" in caplog.text and "Backend:onnx" in caplog.text
    handler.predict([{"body": GOOD.read_bytes()}, {"body": b"nope"}])
    text = caplog.text
    assert "Failed to update metric" not in text
    lines = [line for line in text.splitlines() if "graft_requests_total" in line]
    assert any("Status:2xx" in line for line in lines) and any("Status:4xx" in line for line in lines), lines
