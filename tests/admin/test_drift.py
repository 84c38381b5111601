"""Drift: PSI arithmetic, the report over windows, the gauges, and the optional retrain trigger."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from admin.domain.drift import answers_from_probabilities, profile, psi, verdict
from admin.server import AdminServer
from graft.core.capture import read_captures
from handlers.capture import CaptureWriter
from tests.admin.test_api import settings
from tests.support.auth import ADMIN
from tests.support.fakes import FakeRollout, fake_evaluate, placeholder_export
from tests.support.images import image_folder, photo
from tests.support.waiting import wait_for, wait_ready


def test_psi_is_zero_for_the_same_mix_and_grows_with_the_shift() -> None:
    ref = {"ants": 0.5, "bees": 0.5}
    assert psi(ref, ref) == 0.0
    small, big = psi(ref, {"ants": 0.55, "bees": 0.45}), psi(ref, {"ants": 0.9, "bees": 0.1})
    assert 0 < small < 0.1 < 0.25 < big
    assert big == pytest.approx(0.4 * math.log(0.9 / 0.5) - 0.4 * math.log(0.1 / 0.5), abs=1e-4)
    assert psi(ref, {"ants": 1.0}) > 1, "a class that vanished counts (floored, not infinite)"
    assert [verdict(v) for v in (None, 0.05, 0.1, 0.3)] == ["too_few", "stable", "moderate", "shifted"]


def test_profile_of_answers() -> None:
    answers = answers_from_probabilities([[0.9, 0.1], [0.45, 0.55], []], ["ants", "bees"])
    assert answers == [("ants", 0.9, pytest.approx(0.8)), ("bees", 0.55, pytest.approx(0.1))]
    p = profile(answers, low_margin=0.2)
    assert p.n == 2 and p.shares == {"ants": 0.5, "bees": 0.5}
    assert p.mean_confidence == pytest.approx(0.725) and p.low_margin_share == 0.5


def half_and_half(run_dir: Path, paths: Sequence[Path], device: str) -> tuple[list[list[float]], list[str]]:
    """The champion on its holdout: right and sure on every image (the holdout is half ants, half bees)."""
    return [[0.9, 0.1] if "ants" in Path(p).name else [0.1, 0.9] for p in paths], ["ants", "bees"]


def gauge(text: str, name: str, **labels: str) -> float:
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}{{{sel}}} (\S+)$" if sel else rf"^{name} (\S+)$", text, re.M)
    assert m, f"{name} {labels} not in /metrics"
    return float(m.group(1))


def test_drift_report_and_gauges_follow_the_traffic_mix(tmp_path: Path, free_port: int) -> None:
    base = image_folder(tmp_path / "base", {"train": 2, "val": 5})
    st = settings(tmp_path, admin_port=free_port, base_data=base, capture_scan_s=0.2, drift_min_captures=10)
    extra = {"evaluate": fake_evaluate, "export": placeholder_export, "probabilities": half_and_half}
    stored = []
    writer = CaptureWriter(st.capture_path, "graft", "1", ["ants", "bees"], 1.0, 10**9,
                           lambda outcome, n: stored.extend([outcome] * n))  # fmt: skip

    def serve(n: int, ants_share: float, start: int) -> None:
        for i in range(n):
            p = 0.8 if i < ants_share * n else 0.3
            writer.offer(photo(start + i, (24, 24)), [p, 1 - p], str(i))
        wait_for(lambda: len(stored) >= start + n, 20, what="captures written")

    with AdminServer(st, rollout=FakeRollout(), app_kwargs=extra) as server, \
            httpx.Client(base_url=server.url, headers=ADMIN) as c:  # fmt: skip
        wait_ready(c)
        serve(20, 0.5, 0)
        wait_for(lambda: c.get("/v1/review/stats").json()["captured"] == 20, 20, what="indexing")
        report = c.get("/v1/drift", params={"windows": 3}).json()
        assert report["method"] == "psi" and report["version"] == "1"
        assert report["reference"]["shares"] == {"ants": 0.5, "bees": 0.5} and report["reference"]["n"] == 10
        latest = report["windows"][0]
        assert latest["captures"] == 20 and latest["psi"] == 0.0 and latest["status"] == "stable"
        assert latest["mean_confidence"] == pytest.approx(0.75) and latest["low_margin_share"] == 0.0
        assert report["windows"][1]["captures"] == 0 and report["windows"][1]["status"] == "too_few"
        # The background pass sets the gauges from its own report, which may have counted fewer captures.
        before = wait_for(lambda: (t := c.get("/metrics").text) and gauge(t, "graft_admin_drift_predicted_share",
                          label="ants", source="traffic") == 0.5 and t, 10, what="the gauges")  # fmt: skip
        assert gauge(before, "graft_admin_drift_psi") == 0.0

        serve(60, 1.0, 20)  # the traffic turns to ants only
        wait_for(lambda: c.get("/v1/review/stats").json()["captured"] == 80, 20, what="indexing")
        latest = c.get("/v1/drift").json()["windows"][0]
        assert latest["captures"] == 80 and latest["status"] == "shifted" and latest["psi"] > 0.25
        assert latest["moved"][0]["change"] == pytest.approx(0.375) and latest["shares"]["ants"] == 0.875
        after = wait_for(lambda: (t := c.get("/metrics").text) and gauge(t, "graft_admin_drift_psi") > 0.25 and t,
                         10, what="the gauges to move")  # fmt: skip
        assert gauge(after, "graft_admin_drift_predicted_share", label="ants", source="traffic") == 0.875
        assert gauge(after, "graft_admin_drift_mean_confidence", source="holdout") == 0.9
        counted = re.findall(r'^graft_admin_captures\{status="\w+"\} (\S+)$', c.get("/metrics").text, re.M)
        wait_for(lambda: sum(map(float, re.findall(r'^graft_admin_captures\{status="\w+"\} (\S+)$',
                                                   c.get("/metrics").text, re.M))) == 80, 10,
                 what=f"the capture gauges to count 80 (last {counted})")  # fmt: skip
        time.sleep(1.1)
        r = c.get("/v1/drift", params={"window_s": 1, "windows": 2})
        assert r.status_code == 200 and r.json()["windows"][0]["captures"] == 0, "nothing served in the last second"
        assert c.get("/v1/drift", params={"windows": 0}).status_code == 422
        assert c.get("/v1/drift", headers={"Authorization": "Bearer x" * 3}).status_code == 401
    assert len(read_captures(st.capture_path, "graft")) == 80


def test_drift_may_start_a_job_once_per_cooldown(tmp_path: Path) -> None:
    from admin.domain.service import AdminService

    started: list[str] = []
    st = settings(tmp_path, retrain_on_drift_psi=0.2, drift_retrain_cooldown_s=3600)
    svc = AdminService(st, rollout=FakeRollout(), evaluate=fake_evaluate, export=placeholder_export)
    svc.open()
    try:
        svc.feedback.start_job = lambda trigger: started.append(trigger)
        svc.feedback._maybe_retrain(0.1)
        svc.feedback._maybe_retrain(None)
        assert started == []
        svc.feedback._maybe_retrain(0.3)
        svc.feedback._maybe_retrain(0.5)
        assert started == ["drift"], "once per cooldown"
        svc.db.set_meta("drift_retrain_at", str(time.time() - 4000))
        svc.feedback._maybe_retrain(0.3)
        assert started == ["drift", "drift"]
    finally:
        svc.close()


def test_the_reference_is_computed_once_when_asked_at_once(tmp_path: Path) -> None:
    """The API and the background pass may ask for a new version's reference together: one of them runs the
    holdout through the model, the other waits for its answer (each run costs seconds of CPU)."""
    import threading

    from admin.domain.drift import DriftMonitor
    from admin.store.captures import CaptureStore
    from admin.store.db import Database
    from admin.store.rows import ModelVersion

    calls: list[int] = []

    def slow(run_dir: Path, paths: Sequence[Path], device: str) -> tuple[list[list[float]], list[str]]:
        calls.append(len(paths))
        time.sleep(0.3)
        return half_and_half(run_dir, paths, device)

    db = Database(tmp_path / "admin.sqlite3")
    monitor = DriftMonitor(db, CaptureStore(db), slow, "cpu", 0.1, 30)
    run = tmp_path / "run"
    run.mkdir()
    model = ModelVersion(version="3", status="accepted", source="import", run_dir=run, labels=["ants", "bees"],
                         created_at="now", updated_at="now")  # fmt: skip
    holdout = [tmp_path / "ants-1.png", tmp_path / "bees-1.png"]
    results = []
    threads = [threading.Thread(target=lambda: results.append(monitor.reference(model, lambda: holdout)))
               for _ in range(4)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert calls == [2], "one computation for four callers"
    assert len(results) == 4 and all(r is not None and r.shares == {"ants": 0.5, "bees": 0.5} for r in results)
    db.close()
