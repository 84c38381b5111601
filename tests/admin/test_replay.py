"""Shadow replay: the arithmetic of the report, and a job that replays captured traffic before its switch."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from admin.domain.replay import ReplayRejectedError, check, confidence_summary, replay, share_changes
from admin.store.rows import CaptureRow
from graft.core.errors import UpstreamError
from handlers.capture import CaptureWriter
from tests.admin.test_jobs import Env, post, retrain
from tests.support.auth import ADMIN
from tests.support.images import photo
from tests.support.waiting import wait_for, wait_ready


@pytest.fixture
def env(tmp_path: Path, free_port: int) -> Env:
    return Env(tmp_path, free_port)


def row(i: int, predicted: str, score: float) -> CaptureRow:
    return CaptureRow(
        id=f"{i:020d}-00000000", model_name="m", model_version="1", captured_at=0.0, request_id="", image_file=f"{i}",
        predicted=predicted, labels=[predicted], scores=[score], margin=0.1, entropy=0.5, pixels_sha=None,
        phash=None, status="queued", duplicate_of=None, seen=1, label=None, sample_id=None, reviewed_at=None,
    )  # fmt: skip


def test_replay_measures_agreement_confidence_and_moved_labels(tmp_path: Path) -> None:
    rows = [row(i, "ants" if i < 6 else "bees", 0.6) for i in range(10)]
    for r in rows:
        (tmp_path / r.image_file).write_bytes(r.image_file.encode())
    (tmp_path / "9").unlink()  # pruned since: not evidence either way

    def candidate(payload: bytes) -> list[tuple[str, float]]:
        if payload == b"8":
            raise UpstreamError("refused")
        return [("ants", 0.95)]  # answers ants to everything

    report = replay(candidate, rows, lambda r: (tmp_path / r.image_file).read_bytes(), "2", "1")
    assert (report.replayed, report.answered) == (10, 8)
    assert report.agreement == 0.75  # 6 ants of 8 answered
    assert report.champion["mean"] == 0.6 and report.candidate["mean"] == 0.95
    assert report.candidate["histogram"]["counts"][9] == 8 and sum(report.champion["histogram"]["counts"]) == 8
    assert report.moved[0] == {"label": "ants", "champion_share": 0.75, "candidate_share": 1.0, "change": 0.25}
    check(report, None)
    check(report, 0.7)
    with pytest.raises(ReplayRejectedError, match=r"75\.0% of 8"):
        check(report, 0.8)
    empty = replay(candidate, [], lambda r: b"", "2", "1")
    assert empty.agreement is None and "no captured traffic" in empty.note
    check(empty, 0.99)  # no evidence against the candidate


def test_histogram_and_shares_edges() -> None:
    assert confidence_summary([0.0, 1.0, 0.55])["histogram"]["counts"] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    assert confidence_summary([])["mean"] is None
    assert share_changes(["a", "a"], ["b", "b"])[0]["change"] in (1.0, -1.0)


def _serve_traffic(env: Env, n: int) -> None:
    stored: list[str] = []
    writer = CaptureWriter(env.settings().capture_path, "graft", "1", ["ants", "bees"], 1.0, 10**9,
                           lambda outcome, n: stored.extend([outcome] * n))  # fmt: skip
    for i in range(n):
        writer.offer(photo(7000 + i, (24, 24)), [0.7, 0.3], str(i))  # the champion said "ants"
    wait_for(lambda: len(stored) == n, 20, what="captures written")


@pytest.mark.parametrize("answer, gate, outcome", [("ants", 0.9, "succeeded"), ("bees", 0.9, "rejected"),
                                                   ("bees", None, "succeeded")])  # fmt: skip
def test_a_job_replays_captured_traffic_before_switching(
    env: Env, answer: str, gate: float | None, outcome: str
) -> None:
    _serve_traffic(env, 12)
    env.rollout.answers["2"] = answer
    with env.server(replay_min_agreement=gate, replay_captures=10) as server, \
            httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as api:  # fmt: skip
        wait_ready(api)
        for i in range(6):
            post(api, 5000 + i, "ants" if i % 2 else "bees")
        job = retrain(api, env, 0.95)
        assert job["status"] == outcome, job
        replayed = job["replay"]
        assert replayed["replayed"] == 10 and replayed["answered"] == 10, "the latest N, all answered"
        assert replayed["champion_version"] == "1" and replayed["candidate_version"] == "2"
        assert replayed["agreement"] == (1.0 if answer == "ants" else 0.0)
        assert replayed["champion"]["mean"] == 0.7 and replayed["candidate"]["mean"] == 0.9
        model = api.get("/v1/models/2").json()
        assert model["replay"] == replayed
        if outcome == "rejected":
            assert "shadow replay" in job["reason"] and "below replay_min_agreement=90.0%" in job["reason"]
            assert env.rollout.default_version("graft") == "1" and "2" not in env.rollout.versions("graft")
            assert model["status"] == "rejected"
        else:
            assert env.rollout.default_version("graft") == "2"
        calls = [c for c in env.rollout.calls if c[1] == "2"]
        assert calls[:2] == [("deploy", "2"), ("smoke_test", "2")], "replay comes after the smoke test"
