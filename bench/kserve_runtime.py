"""Throughput, latency and memory of graft's KServe runtime (graft/kserve/) on one archive.

    .venv/bin/python -m bench.kserve_runtime --model-store STORE --model antsbees --version 1 [--out FILE.json]

Starts ``python -m graft.kserve.server`` (without tokens) on the store with only that version loaded,
measures the cold start to its first answer, then KServe v1 requests with real ants/bees JPEGs at each
concurrency (bench/load.py's client, in this process) and the runtime's peak RSS. The comparison with
TorchServe in one run is bench/serve.py's job (issue 24); this measures the runtime alone.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.load import dump, load, vm_hwm_mb

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hymenoptera" / "val"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    port = _port()
    cmd = [sys.executable, "-m", "graft.kserve.server", "--model-store", args.model_store, "--only",
           f"{args.model}={args.version}", "--http-port", str(port), "--grpc-port", "0", "--no-auth",
           "--workdir", tempfile.mkdtemp(prefix="graft-kserve-bench-")]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}/v1/models/{args.model}:predict"
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the runtime exited with {proc.returncode}")
            try:
                if httpx.post(url, content=bodies[0], timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        cold = time.perf_counter() - t0
        results = {"cold_start_s": round(cold, 2), "runs": []}
        headers = {"Content-Type": "application/json"}
        for c in args.concurrency:
            r = load(url, headers, bodies, c, args.warmup, args.duration)
            results["runs"].append(r)
            print(json.dumps(r), flush=True)
        results["runtime_peak_rss_mb"] = round(vm_hwm_mb(proc.pid), 1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}))
    dump(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
