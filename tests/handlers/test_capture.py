"""Capture in the handler: what is kept, in what format, within what budget, and that it never hurts a prediction."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from graft.core.capture import (
    MAGIC,
    CaptureRecord,
    decode,
    encode,
    image_type,
    list_captures,
    read_capture,
    uncertainty,
    valid_id,
)
from graft.core.errors import ArtifactError
from graft.core.handler_settings import HandlerSettings, with_environment
from handlers.capture import QUEUE_SIZE, CaptureWriter
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
                         count=lambda outcome, n: seen.__setitem__(outcome, seen.get(outcome, 0) + n))  # fmt: skip


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
    (path,) = list(list_captures(tmp_path, "antsbees"))
    assert [p.name for p in path.parent.iterdir()] == [path.name], "one file per capture, nothing left aside"
    capture = read_capture(path)
    assert capture is not None
    record = capture.record
    assert valid_id(record.id) and path.name == f"{record.id}.cap"
    assert (record.model_name, record.model_version, record.request_id) == ("antsbees", "3", "req-1")
    assert record.labels == ["bees", "ants", "wasps"] and record.scores == [0.7, 0.2, 0.1]
    assert record.margin == pytest.approx(0.5) and record.entropy > 0
    assert capture.image == data, "the bytes the client sent, untouched"
    assert (record.image_type, record.image_bytes) == ("png", len(data)) and time.time() - record.captured_at < 60


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
    kept = [c.record for c in map(read_capture, list_captures(tmp_path, "antsbees")) if c is not None]
    assert len(kept) == len(list(folder.iterdir())), "every file left is a whole capture"
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
                         count=lambda outcome, n: counts.__setitem__(outcome, counts.get(outcome, 0) + n))  # fmt: skip
    t0 = time.perf_counter()
    for i in range(QUEUE_SIZE + 50):
        stuck.offer(b"x", [0.6, 0.3, 0.1], str(i))
    assert time.perf_counter() - t0 < 1.0, "offer never waits"
    stuck._flush()
    assert counts == {"dropped_queue": 50}
    _StuckWriter.release.set()


def test_extensions_follow_the_magic_bytes() -> None:
    assert image_type(solid(fmt="JPEG")) == "jpg" and image_type(solid(fmt="PNG")) == "png"
    assert image_type(solid(fmt="WEBP")) == "webp" and image_type(solid(fmt="BMP")) == "bmp"
    assert image_type(b"whatever") == "bin"


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


def _record(capture_id: str, **changes: object) -> CaptureRecord:
    values: dict[str, object] = dict(id=capture_id, model_name="antsbees", model_version="1", captured_at=1.0,
                                     request_id="", image_type="png", image_bytes=3, labels=["a"], scores=[1.0],
                                     margin=1.0, entropy=0.0)  # fmt: skip
    return CaptureRecord(**{**values, **changes})  # type: ignore[arg-type]


def test_incomplete_and_damaged_capture_files_are_not_read(tmp_path: Path) -> None:
    folder = tmp_path / "antsbees"
    folder.mkdir()
    good = _record("00000000000000000003-deadbeef")
    whole = encode(good, b"abc")
    assert decode(whole) is not None and decode(whole).image == b"abc"  # type: ignore[union-attr]
    cases = {
        "00000000000000000001-deadbeef": b"{not a capture",
        "00000000000000000002-deadbeef": MAGIC + b"{not json\nabc",
        "00000000000000000003-deadbeef": whole[:-1],  # still being written: shorter than its record says
        "00000000000000000004-deadbeef": encode(_record("00000000000000000004-deadbeef", labels=[]), b"abc"),
        "00000000000000000005-deadbeef": encode(_record("00000000000000000006-deadbeef"), b"abc"),  # another's
        "00000000000000000007-deadbeef": encode(_record("00000000000000000007-deadbeef", image_type="exe"), b"abc"),
    }
    for capture_id, data in cases.items():
        (folder / f"{capture_id}.cap").write_bytes(data)
    assert [read_capture(p) for p in list_captures(tmp_path, "antsbees")] == [None] * len(cases)
    (folder / f"{good.id}.cap").write_bytes(whole)  # now complete
    capture = read_capture(folder / f"{good.id}.cap")
    assert capture is not None and capture.record == good and capture.image == b"abc"
    assert [p.name for p in list_captures(tmp_path, "antsbees", after=good.id)] == [
        "00000000000000000004-deadbeef.cap", "00000000000000000005-deadbeef.cap", "00000000000000000007-deadbeef.cap"]


def test_counts_are_summed_and_emitted_when_the_traffic_pauses(tmp_path: Path) -> None:
    """Each emission is a line TorchServe's frontend parses: a burst of captures is counted in a few."""
    calls: list[tuple[str, int]] = []
    w = CaptureWriter(tmp_path, "antsbees", "3", LABELS, 1.0, 10**9, count=lambda o, n: calls.append((o, n)))
    for i in range(100):
        w.offer(png(i), [0.5, 0.3, 0.2], str(i))
    wait_for(lambda: sum(n for _, n in calls) == 100)
    assert len(calls) < 20 and {o for o, _ in calls} == {"stored"}, calls
