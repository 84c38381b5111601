"""Throughput, latency and memory of graft's KServe runtime (graft/kserve/) on one archive.

    .venv/bin/python -m bench.kserve_runtime --model-store STORE --model antsbees --version 1 [--out FILE.json]

Starts ``python -m graft.kserve.server`` (without tokens) on the store with only that version loaded,
measures the cold start to its first answer, then KServe v1 requests with real ants/bees JPEGs at each
concurrency (bench/load.py's client, in this process) and the runtime's peak RSS. The comparison with
TorchServe in one run is ``bench/serve.py --runtimes`` (it starts the runtime with :func:`runtime`).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.load import dump, load, vm_hwm_mb
from graft.core.util import stop_child

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hymenoptera" / "val"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Runtime:
    proc: subprocess.Popen[bytes]
    url: str  # http://127.0.0.1:PORT
    headers: dict[str, str]  # the inference key, when tokens are on
    started: float  # perf_counter() just before the process was started


def v2_binary(image: bytes, header_len: int = 160) -> tuple[bytes, dict[str, str]]:
    """One image as an OIP v2 request in the binary extension's framing (the image bytes as they are).

    The JSON header is padded with spaces to ``header_len`` so every request of a load run shares one
    ``Inference-Header-Content-Length`` (the load generator sends fixed headers)."""
    tensor = struct.pack("<I", len(image)) + image
    doc = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                  "parameters": {"binary_data_size": len(tensor)}}]}).encode()  # fmt: skip
    if len(doc) > header_len:
        raise ValueError(f"a {len(doc)}-byte header does not fit {header_len}")
    return doc.ljust(header_len) + tensor, {"Inference-Header-Content-Length": str(header_len),
                                            "Content-Type": "application/octet-stream"}  # fmt: skip


@contextmanager
def runtime(store: Path, model: str, version: str, workdir: Path, auth: bool = True) -> Iterator[Runtime]:
    """``python -m graft.kserve.server`` on ``store`` with only ``model`` ``version`` loaded; SIGTERM on exit."""
    port = _port()
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "graft.kserve.server", "--model-store", str(store), "--only", f"{model}={version}",
           "--http-port", str(port), "--grpc-port", "0", "--workdir", str(workdir), *([] if auth else ["--no-auth"])]
    log = open(workdir / "runtime.log", "wb")  # noqa: SIM115 - closed below
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        headers: dict[str, str] = {}
        key_file = workdir / "key_file.json"
        while auth and not headers:  # written at start, before the models load
            if proc.poll() is not None:
                raise SystemExit(f"the runtime exited with {proc.returncode}: see {workdir / 'runtime.log'}")
            if key_file.is_file() and key_file.stat().st_size:
                headers = {"Authorization": f"Bearer {json.loads(key_file.read_text())['inference']['key']}"}
            time.sleep(0.1)
        yield Runtime(proc, f"http://127.0.0.1:{port}", headers, started)
    finally:
        stop_child(proc, 60, "the KServe runtime")
        log.close()


def first_answer(url: str, body: bytes, headers: dict[str, str], started: float, alive: Callable[[], bool],
                 timeout: float = 900) -> float:  # fmt: skip
    """Seconds from ``started`` to the first 200 from ``url`` (polled every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise SystemExit(f"the server behind {url} exited before its first answer")
        try:
            if httpx.post(url, content=body, headers=headers, timeout=10).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"no answer from {url} within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-store", required=True)
    p.add_argument("--model", default="antsbees")
    p.add_argument("--version", default="1")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    jpegs = sorted(DATA.glob("*/*.jpg"))[: args.images]
    bodies = [json.dumps({"data": base64.b64encode(j.read_bytes()).decode()}).encode() for j in jpegs]
    workdir = Path(tempfile.mkdtemp(prefix="graft-kserve-bench-"))
    with runtime(Path(args.model_store), args.model, args.version, workdir, auth=False) as rt:
        url = f"{rt.url}/v1/models/{args.model}:predict"
        headers = {"Content-Type": "application/json"}
        cold = first_answer(url, bodies[0], headers, rt.started, lambda: rt.proc.poll() is None)
        results: dict[str, object] = {"cold_start_s": round(cold, 2)}
        runs = []
        for c in args.concurrency:
            r = load(url, headers, bodies, c, args.warmup, args.duration)
            runs.append(r)
            print(json.dumps(r), flush=True)
        results["runtime_peak_rss_mb"] = round(vm_hwm_mb(rt.proc.pid), 1)
    print(json.dumps(results))
    dump(args.out, {**results, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
