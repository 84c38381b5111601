"""The second half of ``graft demo``: serve the run folder, collect new samples, retrain, gate, swap.

It runs ``graft serve RUN_DIR`` as a user would (a child process, an admin token in its environment, free
local ports), waits for ``/readyz``, and talks to it over HTTP, narrating each step. The admin adopts the
served model and its base data (the dataset its ``model.json`` records) on its own.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from graft.core.util import stop_child
from graft.torchserve.client import TorchServeClient
from graft.torchserve.launcher import free_ports

log = logging.getLogger(__name__)
MODEL = "fashion"


@dataclass
class Service:
    admin: httpx.Client
    torchserve: TorchServeClient
    state: Path


def wait_until_ready(proc: subprocess.Popen[bytes], admin: httpx.Client, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"graft serve exited with code {proc.returncode}:\n{tail}")
        try:
            if admin.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"graft serve was not ready after {timeout:.0f}s; see {log_path}")
        time.sleep(1)


@contextmanager
def running_service(workdir: Path, run_dir: Path, port_base: int | None = None) -> Iterator[Service]:
    """``graft serve RUN_DIR`` in a child process; SIGTERM on exit (a clean stop, as Ctrl-C would be).
    Ports: ``graft serve --port-base``'s (N..N+4, the admin N+10), else any free ones."""
    if port_base is not None:
        inf, mgmt, met, g1, g2, adm = (port_base + i for i in (0, 1, 2, 3, 4, 10))
    else:
        inf, mgmt, met, g1, g2, adm = free_ports(6)
    state = workdir / "admin"
    token = secrets.token_urlsafe(24)
    cmd = [
        sys.executable, "-m", "graft.cli", "serve", str(run_dir), "--model-name", MODEL,
        "--admin-state-dir", str(state), "--admin-port", str(adm),
        "--inference-address", f"http://127.0.0.1:{inf}", "--management-address", f"http://127.0.0.1:{mgmt}",
        "--metrics-address", f"http://127.0.0.1:{met}", "--grpc-inference-port", str(g1),
        "--grpc-management-port", str(g2),
    ]  # fmt: skip
    log.info("$ GRAFT_ADMIN_TOKEN=... graft serve %s --model-name %s --admin-state-dir %s", run_dir, MODEL, state)
    log_path = workdir / "serve.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, "GRAFT_ADMIN_TOKEN": token}, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    admin = httpx.Client(base_url=f"http://127.0.0.1:{adm}", headers={"Authorization": f"Bearer {token}"}, timeout=600)
    ts = TorchServeClient(f"http://127.0.0.1:{mgmt}", f"http://127.0.0.1:{inf}", state / "torchserve" / "key_file.json")
    try:
        wait_until_ready(proc, admin, log_path, 900)
        yield Service(admin, ts, state)
    finally:
        admin.close()
        ts.close()
        stop_child(proc, 120, "graft serve")


def _predict(ts: TorchServeClient, image: bytes) -> dict[str, Any]:
    r = ts.predict(MODEL, image)
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


def _post_samples(api: httpx.Client, new: dict[str, list[bytes]], start: int) -> None:
    for label, images in new.items():
        for i in range(0, len(images), 16):
            chunk = images[i : i + 16]
            files = [("file", (f"{label}-{start + i + j}.png", b, "image/png")) for j, b in enumerate(chunk)]
            api.post("/v1/samples/batch", files=files, data={"label": label}).raise_for_status()


def serve_and_retrain(
    workdir: Path, data: Path, run_dir: Path, start: int, extra: int, port_base: int | None = None
) -> dict[str, Any]:
    """Serve v1 with ``graft serve RUN_DIR``, post ``extra`` new images per class, retrain, report the gate."""
    from training.fashion_mnist import fashion_mnist_pngs

    probe = next((data / "val" / "sneaker").iterdir()).read_bytes()
    with running_service(workdir, run_dir, port_base) as svc:
        before = _predict(svc.torchserve, probe)
        log.info("serving v%s: a sneaker photo -> %s", before["model_version"], before["predictions"][0])
        ready = svc.admin.get("/readyz").json()
        new = fashion_mnist_pngs(start, extra)
        _post_samples(svc.admin, new, start)
        stats = svc.admin.get("/v1/samples/stats").json()
        log.info("posted %d new labelled images through the admin API", sum(len(v) for v in new.values()))
        job_id = svc.admin.post("/v1/retrain").json()["job_id"]
        job = _wait(svc.admin, f"/v1/jobs/{job_id}", lambda b: b["status"] not in ("queued", "running"), 3600)
        after = _predict(svc.torchserve, probe)
        models = svc.admin.get("/v1/models").json()
    return {
        "mar": str(svc.state / "model-store" / f"{MODEL}-1.mar"),
        "base_data_warnings": ready.get("warnings", []),
        "samples": stats,
        "job": {k: job.get(k) for k in ("status", "promoted", "reason", "candidate_version")},
        "answered_before": before["model_version"],
        "answered_after": after["model_version"],
        "default_version": models.get("default"),
    }
