"""A live loop for end-to-end tests: a small real model trained with ``graft train``, served by a real
TorchServe (capture on) with the real admin beside it, ants/bees images from ../shared."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from admin.server import AdminServer
from admin.settings import AdminSettings
from graft.core.capture import read_captures
from tests.support.auth import ADMIN, ADMIN_TOKEN, SAMPLER, SAMPLES_TOKEN
from tests.support.paths import REPO
from tests.support.waiting import wait_ready

NAME = "antsbees"


def jpegs(root: Path, split: str, label: str) -> list[Path]:
    return sorted(p for p in (root / split / label).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))


def graft(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "graft.cli", *args], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def ts_config(tmp: Path, store: Path, environment: dict[str, str]) -> Any:
    from graft.torchserve.launcher import ServeConfig, free_ports

    inf, mgmt, met, g1, g2 = free_ports(5)
    return ServeConfig(
        model_store=store, inference_address=f"http://127.0.0.1:{inf}", management_address=f"http://127.0.0.1:{mgmt}",
        metrics_address=f"http://127.0.0.1:{met}", grpc_inference_port=g1, grpc_management_port=g2,
        workdir=tmp / "ts", environment=environment,
    )  # fmt: skip


@dataclass
class Loop:
    ts: Any
    admin: AdminServer
    api: httpx.Client  # admin token
    labeller: httpx.Client  # samples token
    captures: Path
    data: Path
    state: Path

    def predict(self, data: bytes) -> httpx.Response:
        headers = {**self.ts.headers("inference"), "Content-Type": "application/octet-stream"}
        return httpx.post(f"{self.ts.inference_url}/predictions/{NAME}", content=data, headers=headers, timeout=60)

    def records(self) -> list[Any]:
        return [c.record for c in read_captures(self.captures, NAME)]


@contextmanager
def live_loop(tmp: Path, data: Path, weights: Path, budget_mb: int = 64, **admin: Any) -> Iterator[Loop]:
    """``tmp`` holds everything; ``admin`` overrides the admin's settings."""
    from graft.torchserve.launcher import TorchServe, free_ports

    # The first model trains on base (its val/ chose its best epoch); the admin's base data adds 8 labelled
    # photos per class that no model saw to the holdout, so the gate has fair images to judge on.
    base, admin_base = tmp / "base", tmp / "admin-base"
    for label in ("ants", "bees"):
        train, val = jpegs(data, "train", label)[:10], jpegs(data, "val", label)
        for root, split, files in (
            (base, "train", train), (base, "val", val[:8]), (admin_base, "train", train), (admin_base, "val", val[:16])
        ):  # fmt: skip
            (root / split / label).mkdir(parents=True)
            for f in files:
                (root / split / label / f.name).symlink_to(f)
    run1, store, captures = tmp / "run1", tmp / "store", tmp / "captures"
    graft("train", "--data", str(base), "--backbone", "mobilenet_v2", "--weights", str(weights),
          "--trainable-stages", "0", "--epochs", "4", "--output", str(run1))  # fmt: skip
    graft("export", str(run1), "--model-store", str(store), "--name", NAME, "--version", "1")
    env = {"GRAFT_CAPTURE_RATE": "1", "GRAFT_CAPTURE_DIR": str(captures), "GRAFT_CAPTURE_BUDGET_MB": str(budget_mb)}
    ts = TorchServe(ts_config(tmp, store, env))
    ts.start()
    try:
        ts.wait_ready(timeout=300)
        values: dict[str, Any] = dict(
            admin_token=SecretStr(ADMIN_TOKEN), samples_token=SecretStr(SAMPLES_TOKEN), admin_port=free_ports(1)[0],
            state_dir=tmp / "state", model_store=store, model_name=NAME, base_data=admin_base, initial_run=run1,
            torchserve_management_url=ts.management_url, torchserve_inference_url=ts.inference_url,
            torchserve_key_file=ts.key_file, job_poll_s=0.5, train_args={"epochs": 4}, smoke_images=2,
            gate_policy="accuracy", gate_tolerance=1.0, capture_dir=captures, capture_scan_s=0.5, replay_captures=50,
            drift_min_captures=10,
        )  # fmt: skip
        values.update(admin)
        with AdminServer(AdminSettings(**values)) as server, \
                httpx.Client(base_url=server.url, headers=ADMIN, timeout=600) as api, \
                httpx.Client(base_url=server.url, headers=SAMPLER, timeout=60) as labeller:  # fmt: skip
            wait_ready(api, timeout=120)
            yield Loop(ts, server, api, labeller, captures, data, tmp / "state")
    finally:
        ts.stop()
