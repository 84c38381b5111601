"""Serving benchmark: our handler (PyTorch / ONNX Runtime) vs TorchServe's stock handler vs in-process.

One run on this machine, real ants/bees JPEGs, the ImageNet MobileNetV2 everywhere, each server model
with the same TorchServe settings (workers, batch size, batch delay). For each model and concurrency:
throughput (images/s), p50/p95/p99 latency, and peak RSS (VmHWM) of the frontend and each worker.
The in-process ceiling (decode + preprocess + infer in a loop, no HTTP) runs in its own process.

    .venv/bin/python bench/serve.py                       # full run, a few minutes
    .venv/bin/python bench/serve.py --duration 5 --concurrency 1 8

The stock handler imports ``captum``: ``.venv/bin/pip install captum`` first (benchmark only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)] if str(REPO) not in sys.path else []

log = logging.getLogger("bench.serve")
DATA = REPO.parent / "shared" / "data" / "hymenoptera"


def jpegs(limit: int) -> list[bytes]:
    files = sorted(p for p in DATA.rglob("*.jpg"))[:limit]
    if not files:
        raise SystemExit(f"no JPEGs under {DATA}: the benchmark needs ../shared")
    return [p.read_bytes() for p in files]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


# --------------------------------------------------------------------------- in-process ceiling


def in_process(run_dir: Path, backend: str, batch: int, duration: float, images: int) -> dict[str, Any]:
    """Decode + preprocess + infer, batch after batch, on every core this process may use."""
    import torch

    from graft.core.artifact import read_card
    from handlers.backends import make_backend
    from handlers.preprocess import Preprocessor

    threads = len(__import__("os").sched_getaffinity(0))
    # Preprocessing works on small tensors where extra intra-op threads only add synchronisation; the
    # model gets every core (ORT through its own pool; eager PyTorch needs torch's).
    torch.set_num_threads(threads if backend == "torch" else 1)
    card = read_card(run_dir)
    device = torch.device("cpu")
    model = make_backend(backend, run_dir, device, threads, "auto")
    prep = Preprocessor(card.preprocessing, device, 50_000_000, fast_decode=True)
    data = jpegs(images)
    model.logits(torch.stack([t for t in prep(data[:batch]) if isinstance(t, torch.Tensor)]))  # warm-up
    done, i, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < duration:
        chunk = [data[(i + k) % len(data)] for k in range(batch)]
        i += batch
        model.logits(torch.stack([t for t in prep(chunk) if isinstance(t, torch.Tensor)]))
        done += batch
    elapsed = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"backend": backend, "threads": threads, "batch": batch, "img_s": done / elapsed, "peak_rss_mb": peak_mb}


def run_in_process(run_dir: Path, backend: str, batch: int, duration: float, images: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--in-process", str(run_dir), "--backend", backend, "--batch", str(batch),
         "--duration", str(duration), "--images", str(images)],
        check=True, capture_output=True, text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- load generator


async def load(url: str, headers: dict[str, str], bodies: list[bytes], concurrency: int,
               warmup: float, duration: float) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration

    async def worker(k: int, client: httpx.AsyncClient) -> None:
        nonlocal errors
        i = k
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            r = await client.post(url, content=bodies[i % len(bodies)], headers=headers)
            t1 = time.perf_counter()
            i += concurrency
            # Throughput counts what completes inside the window, whenever it was sent.
            if measure_from <= t1 <= stop_at:
                if r.status_code == 200:
                    latencies.append(t1 - t0)
                else:
                    errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(worker(k, client) for k in range(concurrency)))
    return {
        "concurrency": concurrency, "img_s": len(latencies) / duration, "errors": errors,
        "p50_ms": 1000 * percentile(latencies, 50), "p95_ms": 1000 * percentile(latencies, 95),
        "p99_ms": 1000 * percentile(latencies, 99),
    }


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of a live process (Linux /proc VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker_pids(server: Any, model: str) -> list[int]:
    r = server.client.management("GET", f"/models/{model}")
    return [int(w["pid"]) for v in r.json() for w in v.get("workers", []) if w.get("pid")]


# --------------------------------------------------------------------------- orchestration


def build_store(work: Path, workers: int, batch: int, delay_ms: int) -> tuple[Path, Path]:
    import yaml

    from bench._models import imagenet_run, stock_mar
    from graft.core.handler_settings import model_config_yaml
    from training.export import build_mar

    checks = sorted(DATA.rglob("*.jpg"))[:8]
    run = imagenet_run(work / "run", check_images=checks)
    store = work / "store"
    common: dict[str, Any] = {"batch_size": batch, "max_batch_delay_ms": delay_ms, "workers": workers}
    build_mar(run, store, "ours_torch", "1", {"backend": "torch", **common})
    build_mar(run, store, "ours_onnx", "1", {"backend": "onnx", **common})
    # The same TorchServe settings; the stock handler reads no handler section.
    stock_cfg = yaml.safe_load(model_config_yaml(backend="torch", **common))
    del stock_cfg["handler"]
    stock_mar(store, "stock", yaml.safe_dump(stock_cfg))
    return run, store


def bench_servers(store: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from graft.torchserve.launcher import ServeConfig, TorchServe, free_ports

    inf, mgmt, met, g1, g2 = free_ports(5)
    cfg = ServeConfig(model_store=store, workdir=work / "ts", inference_address=f"http://127.0.0.1:{inf}",
                      management_address=f"http://127.0.0.1:{mgmt}", metrics_address=f"http://127.0.0.1:{met}",
                      grpc_inference_port=g1, grpc_management_port=g2)
    bodies = jpegs(args.images)
    results: dict[str, Any] = {}
    with TorchServe(cfg) as server:
        server.wait_ready(timeout=600)
        headers = {**server.headers(), "Content-Type": "image/jpeg"}
        for model in ("stock", "ours_torch", "ours_onnx"):
            rows = []
            for c in args.concurrency:
                url = f"{server.inference_url}/predictions/{model}"
                row = asyncio.run(load(url, headers, bodies, c, args.warmup, args.duration))
                log.info("%s c=%d: %.1f img/s p99 %.0f ms errors %d",
                         model, c, row["img_s"], row["p99_ms"], row["errors"])
                rows.append(row)
            rss = {f"worker {p}": vm_hwm_mb(p) for p in worker_pids(server, model)}
            results[model] = {"rows": rows, "peak_rss_mb": rss}
        assert server.proc is not None
        results["frontend_peak_rss_mb"] = vm_hwm_mb(server.proc.pid)
    return results


def table(results: dict[str, Any], ceiling: dict[str, Any], conc: list[int]) -> str:
    lines = ["| server | concurrency | img/s | p50 ms | p95 ms | p99 ms | errors |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for model in ("stock", "ours_torch", "ours_onnx"):
        for r in results[model]["rows"]:
            lines.append(f"| {model} | {r['concurrency']} | {r['img_s']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f}"
                         f" | {r['p99_ms']:.0f} | {r['errors']} |")
    for backend, c in ceiling.items():
        lines.append(f"| in-process {backend} (batch {c['batch']}, {c['threads']} threads) | - | {c['img_s']:.1f}"
                     " | - | - | - | - |")
    lines += ["", "| ratio | " + " | ".join(f"c={c}" for c in conc) + " |", "|---|" + "---:|" * len(conc)]

    def rate(model: str, i: int) -> float:
        return float(results[model]["rows"][i]["img_s"])

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b > 0 else "n/a"

    for name, num, den in (("a/c torch vs stock", "ours_torch", "stock"), ("b/c onnx vs stock", "ours_onnx", "stock")):
        lines.append(f"| {name} | " + " | ".join(ratio(rate(num, i), rate(den, i)) for i in range(len(conc))) + " |")
    best = ceiling["onnx"]["img_s"]
    lines.append("| b/d onnx vs in-process onnx | "
                 + " | ".join(ratio(rate("ours_onnx", i), best) for i in range(len(conc))) + " |")
    lines += ["", "| process | peak RSS MB |", "|---|---:|",
              f"| frontend (java) | {results['frontend_peak_rss_mb']:.0f} |"]
    for model in ("stock", "ours_torch", "ours_onnx"):
        for proc, mb in results[model]["peak_rss_mb"].items():
            lines.append(f"| {model} {proc} | {mb:.0f} |")
    for backend, c in ceiling.items():
        lines.append(f"| in-process {backend} | {c['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None, allow_abbrev=False)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--duration", type=float, default=20, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--delay-ms", type=int, default=20)
    p.add_argument("--images", type=int, default=120, help="distinct JPEGs cycled through")
    p.add_argument("--out", type=Path, default=None, help="also write the raw results as JSON here")
    p.add_argument("--in-process", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--backend", default="onnx", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.in_process:
        print(json.dumps(in_process(args.in_process, args.backend, args.batch, args.duration, args.images)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmp:
        work = Path(tmp)
        run, store = build_store(work, args.workers, args.batch, args.delay_ms)
        ceiling = {b: run_in_process(run, b, args.batch, args.duration, args.images) for b in ("onnx", "torch")}
        log.info("in-process: %s", ceiling)
        results = bench_servers(store, work, args)
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "servers": results,
                                        "in_process": ceiling}, indent=2, default=str))
    print(table(results, ceiling, args.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
