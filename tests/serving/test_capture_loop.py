"""The production feedback loop on a real TorchServe with the real handler and the real admin.

Predictions with capture on become review items ordered by margin; near-duplicates collapse; a label
posted through the queue becomes a sample that the next retrain (real ``graft train``) snapshots; the
job replays captured traffic to the candidate's explicit version (never captured again) before the
switch; the drift report and gauges move when the traffic's class mix moves; the disk budget holds; a
broken capture store fails no prediction; with capture off nothing is written.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.support.live import NAME, Loop, jpegs, live_loop, ts_config
from tests.support.waiting import wait_for, wait_job

pytestmark = [pytest.mark.slow, pytest.mark.torchserve]

BUDGET_MB = 4


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory, hymenoptera: Path, mobilenet_weights: Path, java: str
         ) -> Iterator[Loop]:  # fmt: skip
    with live_loop(tmp_path_factory.mktemp("capture-loop"), hymenoptera, mobilenet_weights, BUDGET_MB) as lp:
        yield lp


def queue(loop: Loop, **params: Any) -> list[dict[str, Any]]:
    r = loop.labeller.get("/v1/review", params={"limit": 200, **params})
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def reencode(data: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


def test_served_inputs_become_a_review_queue_a_sample_and_a_replayed_retrain(loop: Loop) -> None:
    files = jpegs(loop.data, "val", "ants")[20:24] + jpegs(loop.data, "val", "bees")[20:24]
    answers = {}
    for f in files:
        r = loop.predict(f.read_bytes())
        assert r.status_code == 200, r.text
        answers[f] = r.json()["predictions"]
    assert loop.predict(b"not an image at all").status_code == 415
    items = wait_for(lambda: len(q := queue(loop)) == len(files) and q, 60, what="8 review items")
    margins = [i["margin"] for i in items]
    assert margins == sorted(margins), "most uncertain first"
    by_top = {(round(a[0]["score"], 4), a[0]["label"]): f for f, a in answers.items()}
    for item in items:
        top = item["scores"][0]
        assert (round(top["score"], 4), top["label"]) in by_top, "each item is what the model answered"
        assert item["model_version"] == "1" and item["predicted"] == top["label"]
        assert item["margin"] == pytest.approx(top["score"] - item["scores"][1]["score"], abs=1e-4)
    assert len(loop.records()) == len(files), "the refused input was not captured"

    # The same pictures again, re-encoded and as the same bytes: nothing new to review.
    first = files[0].read_bytes()
    assert loop.predict(reencode(first)).status_code == 200 and loop.predict(first).status_code == 200
    wait_for(lambda: loop.labeller.get("/v1/review/stats").json()["captured"] == len(files) + 2, 60, what="indexing")
    assert len(queue(loop)) == len(files)
    stats = loop.labeller.get("/v1/review/stats").json()
    assert stats["duplicates"] == 2 and stats["queued"] == len(files)
    assert max(i["seen"] for i in queue(loop)) == 3

    # Label the most uncertain one with its true label: a sample, which the next job trains on.
    target = items[0]
    truth = by_top[(round(target["scores"][0]["score"], 4), target["scores"][0]["label"])].parent.name
    r = loop.labeller.post(f"/v1/review/{target['id']}/label", json={"label": truth})
    assert r.status_code == 200, r.text
    sample = r.json()["sample"]
    assert loop.api.get(f"/v1/samples/{sample['id']}").json()["label"] == truth
    job = loop.api.post("/v1/retrain")
    assert job.status_code == 202, job.text
    done = wait_job(loop.api, job.json()["job_id"], timeout=900)
    assert done["status"] == "succeeded", done
    manifest = json.loads((loop.state / "jobs" / done["id"] / "manifest.json").read_text())
    assert any(sample["id"] in item["path"] for item in manifest["items"]), "the labelled capture was trained on"

    replay = done["replay"]
    assert replay["champion_version"] == "1" and replay["candidate_version"] == "2"
    assert replay["replayed"] == len(files) + 2 and replay["answered"] == replay["replayed"]
    assert 0.0 <= replay["agreement"] <= 1.0 and sum(replay["candidate"]["histogram"]["counts"]) == replay["answered"]
    assert loop.api.get("/v1/models/2").json()["replay"] == replay
    assert not [r for r in loop.records() if r.model_version == "2"], "smoke test and replay were not captured"
    after = loop.predict(files[1].read_bytes())
    assert after.json()["model_version"] == "2"
    wait_for(lambda: [r for r in loop.records() if r.model_version == "2"], 30, what="version 2 captures")


def test_drift_moves_when_the_class_mix_moves(loop: Loop) -> None:
    version = loop.api.get("/v1/models").json()["default"]
    mixed = jpegs(loop.data, "val", "ants")[30:40] + jpegs(loop.data, "val", "bees")[30:40]
    for f in mixed:
        assert loop.predict(f.read_bytes()).status_code == 200
    wait_for(lambda: loop.api.get("/v1/drift").json()["windows"][0]["captures"] >= 20, 60, what="captures indexed")
    before = loop.api.get("/v1/drift").json()
    assert before["version"] == version and before["reference"]["n"] == 32  # the admin base data's val: 16 per class
    for f in jpegs(loop.data, "val", "ants")[40:70]:
        assert loop.predict(f.read_bytes()).status_code == 200
    wait_for(lambda: loop.api.get("/v1/drift").json()["windows"][0]["captures"] >= 50, 60, what="captures indexed")
    after = loop.api.get("/v1/drift").json()
    b, a = before["windows"][0], after["windows"][0]
    shares = (before["reference"]["shares"], b["shares"], a["shares"])
    assert a["psi"] > b["psi"] and a["status"] in ("moderate", "shifted"), shares
    assert a["shares"].get("ants", 0) > b["shares"].get("ants", 0)
    metrics = loop.api.get("/metrics").text
    psi = float(re.search(r"^graft_admin_drift_psi (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]
    assert psi == pytest.approx(a["psi"], abs=0.05)


def test_budget_holds_and_a_broken_store_fails_no_prediction(loop: Loop) -> None:
    folder = loop.captures / NAME
    for f in jpegs(loop.data, "train", "bees")[10:40]:  # ~4 MB more: past the budget
        assert loop.predict(f.read_bytes()).status_code == 200

    def size() -> int:
        return sum(p.stat().st_size for p in folder.iterdir())

    wait_for(lambda: size() <= BUDGET_MB * 2**20, 30, what="the budget to be enforced")
    moved = loop.captures / "moved-away"
    shutil.move(folder, moved)
    folder.write_text("not a folder")  # every write now fails
    try:
        for f in jpegs(loop.data, "train", "ants")[10:14]:
            r = loop.predict(f.read_bytes())
            assert r.status_code == 200 and r.json()["predictions"], r.text
        metrics_url = f"{loop.ts.metrics_url}/metrics"
        def dropped() -> float:
            m = re.search(r'graft_captures_total\{[^}]*Outcome="dropped_error"[^}]*\} (\S+)',
                          httpx.get(metrics_url, timeout=10).text)
            return float(m.group(1)) if m else 0.0

        # Counts are summed in the worker and emitted in a few lines: wait for all four to add up.
        wait_for(lambda: dropped() >= 4, 30, what="the four dropped captures to be counted")
    finally:
        folder.unlink()
        shutil.move(moved, folder)


def test_capture_off_writes_nothing(tmp_path: Path, loop: Loop) -> None:
    from graft.torchserve.launcher import TorchServe

    captures = tmp_path / "captures"
    ts = TorchServe(ts_config(tmp_path, loop.state.parent / "store", {"GRAFT_CAPTURE_DIR": str(captures)}))
    ts.start()
    try:
        ts.wait_ready(timeout=300)
        headers = {**ts.headers("inference"), "Content-Type": "application/octet-stream"}
        for f in jpegs(loop.data, "val", "bees")[:3]:
            r = httpx.post(
                f"{ts.inference_url}/predictions/{NAME}", content=f.read_bytes(), headers=headers, timeout=60
            )
            assert r.status_code == 200
    finally:
        ts.stop()
    assert not captures.exists() or not any(captures.rglob("*")), "the archive's default is off"
