"""``graft serve`` as a benchmark drives it: a real subprocess (TorchServe, the admin), clients for both.

Traffic goes to 127.0.0.1 only. The service is stopped with SIGTERM (background processes of a
non-interactive shell ignore SIGINT).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from bench.load import vm_hwm_mb
from graft.demo_loop import wait_until_ready
from graft.torchserve.client import TorchServeClient
from graft.torchserve.launcher import free_ports

REPO = Path(__file__).resolve().parents[1]
ADMIN_TOKEN, SAMPLES_TOKEN = "bench-admin-token-" + "a" * 24, "bench-samples-token-" + "s" * 24
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SAMPLER = {"Authorization": f"Bearer {SAMPLES_TOKEN}"}


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    admin: httpx.Client
    ts: TorchServeClient
    ports: list[int]
    model: str

    @property
    def predict_url(self) -> str:
        return f"{self.ts.inference_url}/predictions/{self.model}"

    def workers(self) -> set[int]:
        described = self.ts.describe(self.model, "all") or []
        return {int(w["pid"]) for v in described for w in v.get("workers", []) if w.get("pid")}

    def peak_rss_mb(self) -> dict[str, float]:
        """VmHWM of graft serve, the Java frontend and each Python worker."""
        out: dict[str, float] = {}
        for p in [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]:
            role = "java" if "java" in p.name() else ("worker" if "model_service_worker" in " ".join(p.cmdline())
                                                       else "graft serve")  # fmt: skip
            out[f"{role} {p.pid}"] = round(vm_hwm_mb(p.pid), 1)
        return out


@contextmanager
def serving(work: Path, run: Path, model: str, ports: list[int] | None = None, args: Sequence[str] = (),
            env: dict[str, str] | None = None) -> Iterator[Service]:  # fmt: skip
    """``graft serve RUN`` with its state in ``work/state``, until the admin is ready; stopped on exit."""
    ports = ports or free_ports(6)
    inf, mgmt, met, g1, g2, adm = ports
    cmd = [sys.executable, "-m", "graft.cli", "serve", str(run), "--model-name", model,
           "--admin-state-dir", str(work / "state"), "--admin-port", str(adm),
           "--inference-address", f"http://127.0.0.1:{inf}", "--management-address", f"http://127.0.0.1:{mgmt}",
           "--metrics-address", f"http://127.0.0.1:{met}", "--grpc-inference-port", str(g1),
           "--grpc-management-port", str(g2), *args]  # fmt: skip
    environ = {**os.environ, "GRAFT_ADMIN_TOKEN": ADMIN_TOKEN, "GRAFT_SAMPLES_TOKEN": SAMPLES_TOKEN,
               "GRAFT_JOB_POLL_S": "0.5", **(env or {})}  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    logf = open(work / "serve.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, cwd=REPO, env=environ, stdout=logf, stderr=subprocess.STDOUT)
    admin = httpx.Client(base_url=f"http://127.0.0.1:{adm}", timeout=120)
    ts = TorchServeClient(f"http://127.0.0.1:{mgmt}", f"http://127.0.0.1:{inf}",
                          work / "state" / "torchserve" / "key_file.json")  # fmt: skip
    try:
        wait_until_ready(proc, admin, work / "serve.log", 600)
        yield Service(proc, admin, ts, ports, model)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
        admin.close()
        ts.close()
        logf.close()


def run_job(svc: Service, body: dict[str, object] | None = None, timeout: float = 1800) -> dict[str, object]:
    """POST /v1/retrain and wait for the job to finish; its final JSON."""
    r = svc.admin.post("/v1/retrain", json=body or {}, headers=ADMIN)
    r.raise_for_status()
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, object] = svc.admin.get(f"/v1/jobs/{job_id}", headers=ADMIN).json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(1)
    raise TimeoutError(f"job {job_id} still running after {timeout:.0f} s")
