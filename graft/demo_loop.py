"""The second half of ``graft demo``: serve the exported model, collect new samples, retrain, gate, swap.

Runs the real service in-process (TorchServe + the admin API on free local ports) and talks to it
over HTTP exactly as a user would, narrating each step.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger(__name__)
MODEL = "fashion"


@contextmanager
def running_service(workdir: Path, store: Path, data: Path, run_dir: Path) -> Iterator[tuple[Any, httpx.Client]]:
    """TorchServe serving the store, and the admin API beside it; both stopped on exit."""
    from admin.server import AdminServer
    from admin.settings import load_settings
    from graft.torchserve.launcher import ServeConfig, TorchServe, free_ports

    inf, mgmt, met, g1, g2, adm = free_ports(6)
    ts = TorchServe(
        ServeConfig(
            model_store=store, inference_address=f"http://127.0.0.1:{inf}",
            management_address=f"http://127.0.0.1:{mgmt}", metrics_address=f"http://127.0.0.1:{met}",
            grpc_inference_port=g1, grpc_management_port=g2, workdir=workdir / "torchserve",
        )
    )  # fmt: skip
    token = secrets.token_urlsafe(24)
    settings = load_settings(
        admin_token=token, admin_port=adm, state_dir=workdir / "admin", model_store=store, model_name=MODEL,
        base_data=data, initial_run=run_dir, torchserve_management_url=ts.management_url,
        torchserve_inference_url=ts.inference_url, torchserve_key_file=ts.key_file, job_poll_s=1.0,
    )  # fmt: skip
    ts.start()
    try:
        ts.wait_ready(timeout=600)
        with (
            AdminServer(settings) as admin,
            httpx.Client(base_url=admin.url, headers={"Authorization": f"Bearer {token}"}, timeout=600) as api,
        ):
            yield ts, api
    finally:
        ts.stop()


def _predict(ts: Any, image: bytes) -> dict[str, Any]:
    headers = {**ts.headers("inference"), "Content-Type": "application/octet-stream"}
    r = httpx.post(f"{ts.inference_url}/predictions/{MODEL}", content=image, headers=headers, timeout=60)
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def _wait(api: httpx.Client, path: str, done: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        body: dict[str, Any] = api.get(path).json()
        if done(body):
            return body
        note = f"{body.get('status')} {body.get('phase', '')} {body.get('progress', '')}"
        if note != last:
            log.info("job: %s", note)
            last = note
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not done after {timeout:.0f}s: {body}")
        time.sleep(2)


def serve_and_retrain(workdir: Path, store: Path, data: Path, run_dir: Path, start: int, extra: int) -> dict[str, Any]:
    """Serve v1, post ``extra`` new images per class, retrain, and report what the gate decided."""
    from training.fashion_mnist import fashion_mnist_pngs

    probe = next((data / "val" / "sneaker").iterdir()).read_bytes()
    with running_service(workdir, store, data, run_dir) as (ts, api):
        _wait(api, "/readyz", lambda b: b.get("status") == "ready", 120)
        before = _predict(ts, probe)
        log.info("serving v%s: a sneaker photo -> %s", before["model_version"], before["predictions"][0])
        new = fashion_mnist_pngs(start, extra)
        for label, images in new.items():
            for i in range(0, len(images), 16):
                files = [
                    ("file", (f"{label}-{start + i + j}.png", b, "image/png")) for j, b in enumerate(images[i : i + 16])
                ]
                api.post("/v1/samples/batch", files=files, data={"label": label}).raise_for_status()
        stats = api.get("/v1/samples/stats").json()
        log.info("posted %d new labelled images through the admin API", sum(len(v) for v in new.values()))
        job_id = api.post("/v1/retrain").json()["job_id"]
        job = _wait(api, f"/v1/jobs/{job_id}", lambda b: b["status"] not in ("queued", "running"), 3600)
        after = _predict(ts, probe)
        models = api.get("/v1/models").json()
    return {
        "samples": stats,
        "job": {k: job.get(k) for k in ("status", "promoted", "reason", "candidate_version")},
        "answered_before": before["model_version"],
        "answered_after": after["model_version"],
        "default_version": models.get("default"),
    }
