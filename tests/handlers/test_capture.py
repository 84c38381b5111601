"""Capture in the handler: what is kept, in what format, within what budget, and that it never hurts a prediction."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from graft.core.capture import CaptureRecord, list_records, read_record, uncertainty, valid_id
from graft.core.errors import ArtifactError
from graft.core.handler_settings import HandlerSettings, with_environment
from handlers.capture import QUEUE_SIZE, CaptureWriter, extension
from tests.support.images import png, solid

LABELS = ["ants", "bees", "wasps"]


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def writer(root: Path, rate: float = 1.0, budget: int = 10**9, counts: dict[str, int] | None = None) -> CaptureWriter:
    seen = counts if counts is not None else {}
    return CaptureWriter(root, "antsbees", "3", LABELS, rate, budget,
                         count=lambda outcome: seen.__setitem__(outcome, seen.get(outcome, 0) + 1))  # fmt: skip


def test_uncertainty_margin_and_entropy() -> None:
    assert uncertainty([1.0, 0.0, 0.0]) == (1.0, 0.0)
    margin, entropy = uncertainty([0.5, 0.5, 0.0])
    assert margin == 0.0 and entropy == pytest.approx(0.693147, abs=1e-6)


def test_a_capture_is_the_image_as_sent_and_what_the_model_answered(tmp_path: Path) -> None:
    counts: dict[str, int] = {}
    w = writer(tmp_path, counts=counts)
    data = png(1, (32, 32))
    w.offer(data, [0.2, 0.7, 0.1], "req-1")
    wait_for(lambda: counts.get("stored") == 1)
    (path,) = list(list_records(tmp_path, "antsbees"))
    record = read_record(path)
    assert record is not None and valid_id(record.id)
    assert (record.model_name, record.model_version, record.request_id) == ("antsbees", "3", "req-1")
    assert record.labels == ["bees", "ants", "wasps"] and record.scores == [0.7, 0.2, 0.1]
    assert record.margin == pytest.approx(0.5) and record.entropy > 0
    assert (path.parent / record.image_file).read_bytes() == data, "the bytes the client sent, untouched"
    assert record.image_file.endswith(".png") and time.time() - record.captured_at < 60


def test_rate_zero_keeps_nothing_and_a_rate_samples(tmp_path: Path) -> None:
    counts: dict[str, int] = {}
    off = writer(tmp_path / "off", rate=0.0, counts=counts)
    for i in range(50):
        off.offer(png(i), [0.5, 0.3, 0.2], str(i))
    time.sleep(0.3)
    assert counts == {} and not (tmp_path / "off").exists()
    half = writer(tmp_path / "half", rate=0.5, counts=counts)
    for i in range(400):
        half.offer(png(i), [0.5, 0.3, 0.2], str(i))
    wait_for(lambda: half.queue.empty())
    time.sleep(0.2)
    assert 120 < counts["stored"] < 280, counts  # binomial(400, 0.5): 6 sigma either side


def test_the_disk_budget_drops_the_oldest_first(tmp_path: Path) -> None:
    counts: dict[str, int] = {}
    payload = png(0, (64, 64))  # ~12 KB of noise
    budget = 20 * len(payload)
    w = writer(tmp_path, budget=budget, counts=counts)
    for i in range(120):
        w.offer(png(i, (64, 64)), [0.5, 0.3, 0.2], f"r{i}")
        if i % 10 == 0:
            wait_for(lambda: w.queue.empty())
    wait_for(lambda: counts.get("stored") == 120)
    w._prune()  # the thread prunes every few writes; make the last round deterministic
    folder = tmp_path / "antsbees"
    total = sum(p.stat().st_size for p in folder.iterdir())
    assert total <= budget
    kept = [read_record(p) for p in list_records(tmp_path, "antsbees")]
    assert kept and all(isinstance(r, CaptureRecord) for r in kept)
    assert kept[-1] is not None and kept[-1].request_id == "r119", "the newest survive"
    assert all(r is not None and int(r.request_id[1:]) > 60 for r in kept), "the oldest went first"


def test_an_unwritable_store_drops_and_counts_without_raising(tmp_path: Path) -> None:
    counts: dict[str, int] = {}
    blocker = tmp_path / "captures"
    blocker.write_text("a file where the folder should be")
    w = writer(blocker, counts=counts)
    for i in range(5):
        w.offer(png(i), [0.6, 0.3, 0.1], str(i))  # must not raise
    wait_for(lambda: counts.get("dropped_error") == 5)
    assert "stored" not in counts


class _StuckWriter(CaptureWriter):
    """A writer whose disk never answers: its thread takes nothing off the queue."""

    release = threading.Event()

    def _run(self) -> None:
        self.release.wait()


def test_a_full_queue_drops_instead_of_blocking(tmp_path: Path) -> None:
    counts: dict[str, int] = {}
    stuck = _StuckWriter(tmp_path, "antsbees", "3", LABELS, 1.0, 10**9,
                         count=lambda outcome: counts.__setitem__(outcome, counts.get(outcome, 0) + 1))  # fmt: skip
    t0 = time.perf_counter()
    for i in range(QUEUE_SIZE + 50):
        stuck.offer(b"x", [0.6, 0.3, 0.1], str(i))
    assert time.perf_counter() - t0 < 1.0, "offer never waits"
    assert counts == {"dropped_queue": 50}
    _StuckWriter.release.set()


def test_extensions_follow_the_magic_bytes() -> None:
    assert extension(solid(fmt="JPEG")) == "jpg" and extension(solid(fmt="PNG")) == "png"
    assert extension(solid(fmt="WEBP")) == "webp" and extension(solid(fmt="BMP")) == "bmp"
    assert extension(b"whatever") == "bin"


def test_capture_settings_come_from_the_environment(tmp_path: Path) -> None:
    base = HandlerSettings()
    assert base.capture_rate == 0.0, "off by default"
    env = {"GRAFT_CAPTURE_RATE": "0.25", "GRAFT_CAPTURE_DIR": str(tmp_path), "GRAFT_CAPTURE_BUDGET_MB": "5"}
    st = with_environment(base, env)
    assert (st.capture_rate, st.capture_dir, st.capture_budget_mb) == (0.25, str(tmp_path), 5)
    with pytest.raises(ArtifactError, match="GRAFT_CAPTURE_RATE"):
        with_environment(base, {"GRAFT_CAPTURE_RATE": "lots"})
    with pytest.raises(ArtifactError, match="between 0 and 1"):
        with_environment(base, {"GRAFT_CAPTURE_RATE": "2"})


def test_damaged_records_are_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "antsbees"
    folder.mkdir()
    (folder / "00000000000000000001-deadbeef.json").write_text("{not json")
    good = CaptureRecord("00000000000000000002-deadbeef", "antsbees", "1", 1.0, "", "../escape.png", ["a"], [1.0],
                         1.0, 0.0)  # fmt: skip
    (folder / f"{good.id}.json").write_text(good.to_json())
    assert [read_record(p) for p in list_records(tmp_path, "antsbees")] == [None, None], "no path may leave the folder"
    ok = json.loads(good.to_json()) | {"image_file": "x.png"}
    (folder / f"{good.id}.json").write_text(json.dumps(ok))
    assert read_record(folder / f"{good.id}.json") is not None
