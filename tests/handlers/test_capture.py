"""Capture in the handler: what is kept, in what format, within what budget, and that it never hurts a prediction."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from graft.core.capture import (
    MAGIC,
    CaptureRecord,
    DamagedSegmentError,
    decode_segment,
    encode,
    image_type,
    read_at,
    read_captures,
    segment_names,
    uncertainty,
    valid_id,
)
from graft.core.errors import ArtifactError
from graft.core.handler_settings import HandlerSettings, with_environment
from handlers.capture import QUEUE_BYTES, QUEUE_SIZE, CaptureWriter
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
    (name,) = segment_names(tmp_path, "antsbees")
    (capture,) = read_captures(tmp_path, "antsbees")
    record = capture.record
    assert valid_id(record.id) and name == f"{record.id}.seg", "a segment is named after its first capture"
    assert (record.model_name, record.model_version, record.request_id) == ("antsbees", "3", "req-1")
    assert record.labels == ["bees", "ants", "wasps"] and record.scores == [0.7, 0.2, 0.1]
    assert record.margin == pytest.approx(0.5) and record.entropy > 0
    assert capture.image == data, "the bytes the client sent, untouched"
    assert (record.image_type, record.image_bytes) == ("png", len(data)) and time.time() - record.captured_at < 60


def test_captures_are_appended_to_a_segment_until_it_is_full_or_gone(tmp_path: Path) -> None:
    counts: dict[str, int] = {}
    w = writer(tmp_path, budget=16 * 64 * 1024, counts=counts)  # segments of 64 KB
    payload = png(0, (64, 64))  # ~12 KB
    for i in range(8):
        w.offer(png(i, (64, 64)), [0.5, 0.3, 0.2], f"r{i}")
    wait_for(lambda: counts.get("stored") == 8)
    names = segment_names(tmp_path, "antsbees")
    assert len(names) == 2 and len(read_captures(tmp_path, "antsbees")) == 8, "5 fit in 64 KB, then a new one"
    folder = tmp_path / "antsbees"
    data = (folder / names[0]).read_bytes()
    found, end = decode_segment(data)
    assert end == len(data) and [c.record.request_id for _, _, c in found] == [f"r{i}" for i in range(len(found))]
    offset, length, first = found[0]
    assert read_at(folder / names[0], offset, length) == first and read_at(folder / names[0], 1, length) is None
    assert len(payload) * len(found) < 64 * 1024
    for name in names:  # another worker's budget pruned them
        (folder / name).unlink()
    w.offer(png(9), [0.5, 0.3, 0.2], "r9")
    wait_for(lambda: counts.get("stored") == 9)
    assert [c.record.request_id for c in read_captures(tmp_path, "antsbees")] == ["r9"], "a new segment, not a lost one"


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
    kept = [c.record for c in read_captures(tmp_path, "antsbees")]
    assert all(p.suffix == ".seg" for p in folder.iterdir()) and len(kept) < 120
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


def test_the_queue_is_bounded_in_bytes_too(tmp_path: Path) -> None:
    """255 captures of 4 MiB behind a stuck disk held 1 GiB in a worker; the queue now holds QUEUE_BYTES at most."""
    import psutil

    counts: dict[str, int] = {}
    stuck = _StuckWriter(tmp_path, "antsbees", "3", LABELS, 1.0, 10**9,
                         count=lambda outcome, n: counts.__setitem__(outcome, counts.get(outcome, 0) + n))  # fmt: skip
    rss = psutil.Process().memory_info().rss
    big = 4 * 2**20
    for i in range(255):
        stuck.offer(bytes([i]) * big, [0.6, 0.3, 0.1], str(i))  # each request's own body, every page touched
    held = QUEUE_BYTES // big
    assert stuck.queue.qsize() == held and stuck.queued_bytes == held * big <= QUEUE_BYTES
    assert psutil.Process().memory_info().rss - rss < QUEUE_BYTES + 64 * 2**20
    stuck._flush()
    assert counts == {"dropped_queue": 255 - held}
    small = writer(tmp_path / "w", counts=(done := {}))
    for i in range(3):
        small.offer(png(i), [0.6, 0.3, 0.1], str(i))
    wait_for(lambda: done.get("stored") == 3)
    assert small.queued_bytes == 0, "the writer gives back what it wrote"


def test_only_the_admins_key_keeps_a_request_out_of_capture(tmp_path: Path) -> None:
    """Any client may send X-Graft-No-Capture; only the key in the capture folder (the admin's) is honoured."""
    from graft.core.capture import no_capture_key
    from handlers.service import no_capture_header

    key = no_capture_key(tmp_path, create=True)
    assert key is not None and no_capture_key(tmp_path) == key
    w = writer(tmp_path)
    assert w.exempt(key)
    for header in (None, "", "1", "true", key[:-1], key + "x", "k" * len(key)):
        assert not w.exempt(header), header

    class Context:
        def get_all_request_header(self, idx: int) -> dict[str, object]:
            return [{"X-Graft-No-Capture": key.encode()}, {"x-graft-no-capture": "1"}, {}][idx]

    assert [no_capture_header(Context(), i) for i in range(3)] == [key, "1", None]
    assert not writer(tmp_path / "elsewhere").exempt(key), "no key file: nobody is exempt"


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


def test_a_segment_reads_up_to_a_capture_still_being_written_and_refuses_damage() -> None:
    a, b = _record("00000000000000000003-deadbeef"), _record("00000000000000000004-deadbeef")
    whole = encode(a, b"abc") + encode(b, b"xyz")
    found, end = decode_segment(whole)
    assert [(c.record, c.image) for _, _, c in found] == [(a, b"abc"), (b, b"xyz")] and end == len(whole)
    for cut in (1, 5, len(MAGIC) + 3, len(whole) - len(encode(b, b"xyz")) + 4, len(whole) - 1):
        found, end = decode_segment(whole[:cut])  # the writer is in the middle of a capture
        assert end == (0 if cut <= len(encode(a, b"abc")) else len(encode(a, b"abc"))) and len(found) == (end > 0)
    damaged = [
        b"{not a capture",
        MAGIC + b"{not json\nabc",
        encode(_record("00000000000000000004-deadbeef", labels=[]), b"abc"),
        encode(_record("00000000000000000007-deadbeef", image_type="exe"), b"abc"),
        encode(_record("not-an-id"), b"abc"),
    ]
    for data in damaged:
        with pytest.raises(DamagedSegmentError):
            decode_segment(encode(a, b"abc") + data)


def test_counts_are_summed_and_emitted_when_the_traffic_pauses(tmp_path: Path) -> None:
    """Each emission is a line TorchServe's frontend parses: a burst of captures is counted in a few."""
    calls: list[tuple[str, int]] = []
    w = CaptureWriter(tmp_path, "antsbees", "3", LABELS, 1.0, 10**9, count=lambda o, n: calls.append((o, n)))
    for i in range(100):
        w.offer(png(i), [0.5, 0.3, 0.2], str(i))
    wait_for(lambda: sum(n for _, n in calls) == 100)
    assert len(calls) < 20 and {o for o, _ in calls} == {"stored"}, calls
