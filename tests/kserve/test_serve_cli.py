"""``graft serve --runtime kserve``: the CLI starts graft's KServe runtime, says which runtime answers,
serves, and stops it on SIGTERM."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.kserve.runtime import ROOT, free_port
from tests.support.artifacts import images
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow]


def test_graft_serve_runtime_kserve(serving_artifacts: tuple[Path, Path], tmp_path: Path) -> None:
    _, store = serving_artifacts
    port = free_port()
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "graft.cli", "serve", "--model-store", str(store), "--runtime", "kserve",
           "--no-admin", "--kserve-http-port", str(port), "--kserve-grpc-port", "0", "--workdir", str(tmp_path / "w")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    try:
        wait_for(lambda: "inference  http://127.0.0.1" in log.read_text() or proc.poll() is not None, 240,
                 interval=0.5, what="graft serve's announcement")  # fmt: skip
        text = log.read_text()
        assert proc.poll() is None, text[-3000:]
        assert "runtime    KServe" in text and "TorchServe 0.12" not in text
        key_file = tmp_path / "w" / "key_file.json"
        key = json.loads(key_file.read_text())["inference"]["key"]
        jpeg = images("val", 1)[0][0].read_bytes()
        body = {"data": base64.b64encode(jpeg).decode()}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/models/antsbees:predict", json=body, timeout=60,
                       headers={"Authorization": f"Bearer {key}"})  # fmt: skip
        assert r.status_code == 200 and r.json()["model_version"] == "2", r.text  # the newest is the default
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, log.read_text()[-3000:]
    with pytest.raises(httpx.HTTPError):  # the runtime went with it
        httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=2)
