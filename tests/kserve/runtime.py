"""Start graft's KServe runtime (``python -m graft.kserve.server``) as its own process, as production does.

kserve is never imported in the pytest process: its gRPC descriptors and tritonclient's share the
``inference.*`` protobuf names, and one process cannot load both (docs/kserve.md).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from graft.core.util import stop_child
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Runtime:
    url: str
    grpc_port: int
    inference_key: str
    management_key: str
    key_file: Path
    log: Path

    def headers(self, management: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.management_key if management else self.inference_key}"}

    def client(self, management: bool = False) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(management), timeout=60)


@contextmanager
def kserve_runtime(store: Path, workdir: Path, *extra: str, env: dict[str, str] | None = None,
                   timeout: float = 180) -> Iterator[Runtime]:  # fmt: skip
    http_port, grpc_port = free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "runtime.log"
    cmd = [sys.executable, "-m", "graft.kserve.server", "--model-store", str(store), "--http-port", str(http_port),
           "--grpc-port", str(grpc_port), "--grpc-host", "127.0.0.1", "--workdir", str(workdir), *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"
    try:
        def ready() -> bool:
            assert proc.poll() is None, f"the runtime exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            try:
                return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout, interval=0.5, what="the KServe runtime's /v2/health/ready")
        keys = json.loads((workdir / "key_file.json").read_text())
        yield Runtime(url, grpc_port, keys["inference"]["key"], keys["management"]["key"], workdir / "key_file.json",
                      log)  # fmt: skip
    finally:
        stop_child(proc, 30, "the KServe runtime")
