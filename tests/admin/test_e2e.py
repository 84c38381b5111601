"""The whole loop with real parts: ``graft train`` / ``graft export``, the real handler in a real
TorchServe, the admin service over HTTP, ants/bees images from ../shared.

A deliberately weak first model (2 images per class, 1 epoch) is served; the rest of a training
subset is posted as samples; a retrain gives a better candidate that is promoted and answers; then
samples with swapped labels give a worse candidate that the gate rejects while the champion keeps
serving; then a rollback. A stream of predictions runs throughout and must see zero errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from admin.server import AdminServer
from admin.settings import AdminSettings
from tests.support.auth import ADMIN, ADMIN_TOKEN
from tests.support.live import graft, jpegs
from tests.support.streams import PredictionStream
from tests.support.waiting import wait_job, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.torchserve]

NAME = "antsbees"


@pytest.fixture
def world(tmp_path: Path, hymenoptera: Path, mobilenet_weights: Path, java: str) -> Iterator[dict[str, Any]]:
    from graft.torchserve.launcher import ServeConfig, TorchServe, free_ports

    base = tmp_path / "base"
    for label in ("ants", "bees"):
        for split, files in (
            ("train", jpegs(hymenoptera, "train", label)[:2]),
            ("val", jpegs(hymenoptera, "val", label)[:10]),
        ):
            (base / split / label).mkdir(parents=True)
            for f in files:
                (base / split / label / f.name).symlink_to(f)
    run1, store = tmp_path / "run1", tmp_path / "store"
    graft("train", "--data", str(base), "--backbone", "mobilenet_v2", "--weights", str(mobilenet_weights),
          "--trainable-stages", "0", "--epochs", "1", "--output", str(run1))  # fmt: skip
    graft("export", str(run1), "--model-store", str(store), "--name", NAME, "--version", "1")
    inf, mgmt, met, g1, g2 = free_ports(5)
    ts = TorchServe(
        ServeConfig(
            model_store=store, inference_address=f"http://127.0.0.1:{inf}", management_address=f"http://127.0.0.1:{mgmt}",
            metrics_address=f"http://127.0.0.1:{met}", grpc_inference_port=g1, grpc_management_port=g2,
            workdir=tmp_path / "ts",
        )
    )  # fmt: skip
    ts.start()
    try:
        ts.wait_ready(timeout=300)
        st = AdminSettings(
            admin_token=SecretStr(ADMIN_TOKEN), admin_port=free_ports(1)[0], state_dir=tmp_path / "state",
            model_store=store,
            model_name=NAME, base_data=base, initial_run=run1, torchserve_management_url=ts.management_url,
            torchserve_inference_url=ts.inference_url, torchserve_key_file=ts.key_file, job_poll_s=0.5,
            train_args={"epochs": 15}, smoke_images=2,
        )  # fmt: skip
        with AdminServer(st) as admin, httpx.Client(base_url=admin.url, headers=ADMIN, timeout=600) as api:
            yield {"ts": ts, "api": api, "data": hymenoptera, "state": tmp_path / "state"}
    finally:
        ts.stop()


def post_batch(api: httpx.Client, files: list[Path], label: str) -> None:
    for i in range(0, len(files), 8):
        parts = [("file", (f.name, f.read_bytes(), "image/jpeg")) for f in files[i : i + 8]]
        r = api.post("/v1/samples/batch", files=parts, data={"label": label})
        assert r.status_code == 201, r.text


def run_job(api: httpx.Client) -> dict[str, Any]:
    r = api.post("/v1/retrain")
    assert r.status_code == 202, r.text
    return wait_job(api, r.json()["job_id"], timeout=900)


def test_collect_retrain_promote_reject_rollback(world: dict[str, Any]) -> None:
    ts, api, data = world["ts"], world["api"], world["data"]
    wait_ready(api, timeout=120)
    url = f"{ts.inference_url}/predictions/{NAME}"
    headers = {**ts.headers("inference"), "Content-Type": "application/octet-stream"}
    probe = jpegs(data, "val", "bees")[-1].read_bytes()
    stream = PredictionStream(
        lambda c: c.post(url, content=probe, headers=headers),
        lambda r: str(r.json()["model_version"]),
        pause_s=0.05,  # leave the CPU to training; still many requests per swap
        timeout_s=120,
    )
    with stream:
        # 1. The rest of a training subset arrives as labelled samples; retrain; the better model goes in.
        for label in ("ants", "bees"):
            post_batch(api, jpegs(data, "train", label)[2:14], label)
        assert api.get("/v1/samples/stats").json()["since_champion"] == 24
        good = run_job(api)
        assert good["status"] == "succeeded" and good["promoted"], good
        cand, champ = good["metrics"]["candidate"], good["metrics"]["champion"]
        # the first model chose its best epoch on base/val: those 20 images cannot judge it (the fair holdout)
        assert good["gate"]["left_out"] == 20 and cand["n"] == champ["n"] == good["gate"]["comparison"]["n"]
        assert "neither model saw (20 more left out" in good["reason"], good["reason"]
        assert not good["gate"]["unaveraged"]["rejected"] and "before averaging with the champion" in good["reason"]
        answer = httpx.post(url, content=probe, headers=headers, timeout=60).json()
        assert answer["model_version"] == "2" and answer["predictions"][0]["label"] in ("ants", "bees")

        # 2. Ants posted as bees: a candidate that takes ants for bees, rejected; version 2 keeps serving.
        # (Mislabelled samples that land in the holdout favour the candidate on their wrong labels, so the
        # overall difference may not be significant; the ants' recall, judged on clean images, falls.)
        for start in (14, 46):
            post_batch(api, jpegs(data, "train", "ants")[start : start + 32], "bees")
        bad = run_job(api)
        assert bad["status"] == "rejected" and not bad["promoted"], bad["reason"]
        # neither version 2 nor the candidate saw base/val: now it judges, with the new samples' holdout
        assert bad["gate"]["left_out"] == 0 and bad["gate"]["comparison"]["n"] >= 20, bad["reason"]
        # Averaged with version 2 (the default), the refit alone is judged too: either one's drop rejects it.
        assert bad["reason"].startswith(("rejected: candidate", "rejected: before averaging with the champion, the "
                                         "refit alone")) and "95% CI" in bad["reason"], bad["reason"]  # fmt: skip
        assert bad["gate"]["unaveraged"]["p_worse"] < 0.05 or bad["gate"]["unaveraged"]["regressed"], bad["gate"]
        assert "ants" in bad["gate"]["regressed"] or "significantly worse" in bad["reason"], bad["reason"]
        # Before it trained, version 2 looked at the new labels: most of the new "bees" are ants to it.
        check = bad["data_check"]
        assert check["champion"] == "2" and check["flagged"] == ["bees"], check
        assert check["suspect_count"] >= 48 and {s["predicted"] for s in check["suspects"]} == {"ants"}, check
        assert "data check: version 2 disagrees with" in bad["reason"], bad["reason"]
        assert good["data_check"]["flagged"] == [] and good["data_check"]["checked"] == 24, good["data_check"]
        # The check asked about training samples without keeping their frozen features (only holdout images are
        # judged again and again): every stored sample in the feature store is a holdout one.
        kept = [Path(k.rsplit("|", 2)[0]) for f in (world["state"] / "frozen-features").glob("*/index.json")
                for k in json.loads(f.read_text())]  # fmt: skip
        samples = [p for p in kept if "samples" in p.parts]
        assert samples and {api.get(f"/v1/samples/{p.stem}").json()["split"] for p in samples} == {"holdout"}
        assert httpx.post(url, content=probe, headers=headers, timeout=60).json()["model_version"] == "2"

        # 3. Roll back to the first model.
        r = api.post("/v1/rollback")
        assert r.status_code == 200 and r.json()["version"] == "1", r.text
        assert httpx.post(url, content=probe, headers=headers, timeout=60).json()["model_version"] == "1"
    assert stream.errors == [], stream.errors[:5]
    assert stream.ok > 20 and {"1", "2"} <= stream.versions
    models = api.get("/v1/models").json()
    assert models["default"] == "1" and [m["status"] for m in models["models"]] == ["accepted", "accepted", "rejected"]
    assert models["models"][1]["parent_version"] == "1" and models["models"][1]["lineage"]["dataset_digest"]
    metrics = api.get("/metrics").text
    assert 'graft_admin_jobs_total{outcome="succeeded"} 1.0' in metrics
    assert 'graft_admin_jobs_total{outcome="rejected"} 1.0' in metrics
