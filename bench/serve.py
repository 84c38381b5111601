"""Serving benchmark: FP32 vs INT8 ONNX Runtime through our handler, in-process and over TorchServe's HTTP.

One run on this machine, real ants/bees JPEGs. The model is graft's default recipe (MobileNetV2 head on
the frozen ImageNet backbone) trained on the ants/bees set at the start of the run, then exported twice:
``model.onnx`` (FP32) and ``graft export --quantize int8`` (its defaults: calibration on the training
images, the sensitivity pass, the 1-point guard). Every server model gets the same TorchServe settings
(workers, batch size, batch delay). Reported, FP32 and INT8 side by side:

* the model alone: one ONNX Runtime session, batch 8, every core (img/s);
* in-process: decode + preprocess + infer in a loop, no HTTP (img/s, and where the time goes per image:
  decoding and preprocessing vs the model), with the validation accuracy of what that loop serves;
* over HTTP: throughput, p50/p95/p99 latency and CPU milliseconds per image spent by the load generator,
  the Java frontend and the Python workers, per concurrency;
* peak RSS (VmHWM) of every process.

    .venv/bin/python bench/serve.py                          # FP32 and INT8 over HTTP, a few minutes
    .venv/bin/python bench/serve.py --servers stock ours_torch ours_onnx ours_int8   # + stock handler, eager
    .venv/bin/python bench/serve.py --duration 5 --concurrency 1 8
    .venv/bin/python bench/serve.py --runtimes --backends onnx torch   # TorchServe vs the KServe runtime

``--runtimes`` compares the two runtimes instead (issue 24): the same archive (graft's default settings:
one worker, batch 8, 20 ms delay) served by TorchServe (raw JPEG bodies) and by graft's KServe runtime
(OIP v2, the binary extension: the same JPEG bytes), each started fresh per round (A, B, then B, A) so
load drift hits both; throughput and p50/p99 per concurrency, cold start to first answer, peak RSS of
every process (TorchServe: the Java frontend and its workers, summed and each).

The stock handler (``--servers stock``) imports ``captum``: ``.venv/bin/pip install captum`` first.
It and ``ours_torch`` serve the 1000-class ImageNet MobileNetV2 (the stock handler asks for the top 5).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)] if str(REPO) not in sys.path else []

from bench.load import cpu_seconds, dump, load, vm_hwm_mb  # noqa: E402

log = logging.getLogger("bench.serve")
DATA = REPO.parent / "shared" / "data" / "hymenoptera"
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2_imagenet.pth"
SERVERS = ("stock", "ours_torch", "ours_onnx", "ours_int8")
VARIANTS = {"torch": ("torch", "auto"), "onnx": ("onnx", "fp32"), "int8": ("onnx", "int8")}


def jpegs(limit: int) -> list[bytes]:
    files = sorted(p for p in DATA.rglob("*.jpg"))[:limit]
    if not files:
        raise SystemExit(f"no JPEGs under {DATA}: the benchmark needs ../shared")
    return [p.read_bytes() for p in files]


# --------------------------------------------------------------------------- in-process (own process)


def in_process(run_dir: Path, variant: str, batch: int, duration: float, images: int) -> dict[str, Any]:
    """Decode + preprocess + infer, batch after batch, on every core this process may use."""
    import torch

    from graft.core.artifact import read_card
    from handlers.backends import make_backend
    from handlers.preprocess import Preprocessor

    threads = len(os.sched_getaffinity(0))
    backend, precision = VARIANTS[variant]
    # Preprocessing works on small tensors where extra intra-op threads only add synchronisation; the
    # model gets every core (ORT through its own pool; eager PyTorch needs torch's).
    torch.set_num_threads(threads if backend == "torch" else 1)
    card = read_card(run_dir)
    device = torch.device("cpu")
    model = make_backend(backend, run_dir, device, threads, precision)
    prep = Preprocessor(card.preprocessing, device, 50_000_000, fast_decode=True)
    data = jpegs(images)
    model.logits(torch.stack([t for t in prep(data[:batch]) if isinstance(t, torch.Tensor)]))  # warm-up
    # wall and CPU seconds (all threads of this process) spent decoding + preprocessing, and in the model
    done, i, spent, t0 = 0, 0, {"prep": [0.0, 0.0], "model": [0.0, 0.0]}, time.perf_counter()
    while time.perf_counter() - t0 < duration:
        chunk = [data[(i + k) % len(data)] for k in range(batch)]
        i += batch
        # Decoding runs on this thread alone (thread_time); the model on ONNX Runtime's pool too (process_time,
        # which would also count the pool's threads spinning while this thread decodes).
        w1, t1 = time.perf_counter(), time.thread_time()
        x = torch.stack([t for t in prep(chunk) if isinstance(t, torch.Tensor)])
        w2, t2, p2 = time.perf_counter(), time.thread_time(), time.process_time()
        model.logits(x)
        w3, p3 = time.perf_counter(), time.process_time()
        for key, dw, dc in (("prep", w2 - w1, t2 - t1), ("model", w3 - w2, p3 - p2)):
            spent[key][0] += dw
            spent[key][1] += dc
        done += batch
    elapsed = time.perf_counter() - t0
    return {
        "variant": variant, "threads": threads, "batch": batch, "img_s": done / elapsed,
        "decode_preprocess_ms": 1000 * spent["prep"][0] / done, "model_ms": 1000 * spent["model"][0] / done,
        "decode_preprocess_cpu_ms": 1000 * spent["prep"][1] / done, "model_cpu_ms": 1000 * spent["model"][1] / done,
        "val_accuracy": accuracy(model, prep, card.labels, batch),
        "peak_rss_mb": vm_hwm_mb(os.getpid()),  # not ru_maxrss: a child inherits its parent's
    }  # fmt: skip


def accuracy(model: Any, prep: Any, labels: list[str], batch: int) -> float | None:
    """Top-1 accuracy on every ants/bees validation image, decoded and predicted as the handler does."""
    import torch

    if set(labels) != {"ants", "bees"}:
        return None  # the ImageNet model: no ants/bees head
    files = [(p, p.parent.name) for p in sorted((DATA / "val").rglob("*.jpg"))]
    right = 0
    for k in range(0, len(files), batch):
        part = files[k : k + batch]
        x = torch.stack([t for t in prep([p.read_bytes() for p, _ in part]) if isinstance(t, torch.Tensor)])
        right += sum(labels[int(i)] == truth for i, (_, truth) in zip(model.logits(x).argmax(1), part, strict=True))
    return right / len(files)


def model_only(run_dir: Path, batch: int, seconds: float, rounds: int) -> dict[str, Any]:
    """One ONNX Runtime session per model, every core, FP32 and INT8 measured in alternation (median img/s)."""
    import numpy as np
    import onnxruntime as ort

    threads = len(os.sched_getaffinity(0))
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    sessions = {}
    for name, file in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sessions[name] = ort.InferenceSession(str(run_dir / file), opts, providers=["CPUExecutionProvider"])
        for _ in range(5):
            sessions[name].run(None, {"input": x})
    rates: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                sess.run(None, {"input": x})
                n += batch
            rates[name].append(n / (time.perf_counter() - t0))
    out: dict[str, Any] = {k: float(np.median(v)) for k, v in rates.items()}
    out.update(batch=batch, threads=threads, rounds=rates, peak_rss_mb=vm_hwm_mb(os.getpid()))
    return out


def child(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- archives


def ants_bees_run(work: Path) -> Path:
    """graft's default recipe on the ants/bees set (MobileNetV2 weights from ../shared), like ``graft train``."""
    from training import TrainConfig, fit

    run = work / "antsbees"
    fit(TrainConfig(data=DATA, output=run, backbone="mobilenet_v2", weights=str(WEIGHTS)))
    return run


def build_store(work: Path, servers: list[str], workers: int, batch: int, delay_ms: int, run: Path | None = None
                ) -> tuple[Path, Path, Path]:  # fmt: skip
    """(ants/bees run, ImageNet run, store) with one archive per server model asked for."""
    import yaml

    from bench._models import imagenet_run, stock_mar
    from graft.core.handler_settings import model_config_yaml
    from training.export import build_mar, export_run
    from training.quantize import QuantizeOptions

    store = work / "store"
    common: dict[str, Any] = {"batch_size": batch, "max_batch_delay_ms": delay_ms, "workers": workers}
    run = run or ants_bees_run(work)
    export_run(run, store, "ours_int8", "1", model_config={"backend": "onnx", **common}, quantize=QuantizeOptions())
    build_mar(run, store, "ours_onnx", "1", {"backend": "onnx", **common})
    imagenet = work / "imagenet"
    if {"stock", "ours_torch"} & set(servers):
        imagenet_run(imagenet, check_images=sorted(DATA.rglob("*.jpg"))[:8])
        build_mar(imagenet, store, "ours_torch", "1", {"backend": "torch", **common})
    if "stock" in servers:
        # The same TorchServe settings; the stock handler reads no handler section.
        stock_cfg = yaml.safe_load(model_config_yaml(backend="torch", **common))
        del stock_cfg["handler"]
        stock_mar(store, "stock", yaml.safe_dump(stock_cfg))
    for name in {"ours_onnx", "ours_int8", "ours_torch", "stock"} - set(servers):
        (store / f"{name}-1.mar").unlink(missing_ok=True)
    return run, imagenet, store


# --------------------------------------------------------------------------- over HTTP


def handler_seconds(server: Any, model: str) -> dict[str, float]:
    """The handler's own totals for one model (its Prometheus histograms): seconds preprocessing
    (parse + decode + transform), seconds in the model, images."""
    import httpx

    text = httpx.get(f"{server.metrics_url}/metrics", timeout=30).text
    names = {"graft_preprocess_seconds_sum": "preprocess", "graft_inference_seconds_sum": "inference",
             "graft_batch_size_sum": "images"}  # fmt: skip
    out = dict.fromkeys(names.values(), 0.0)
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name in names and f'ModelName="{model}"' in rest:
            out[names[name]] += float(line.rsplit(" ", 1)[1])
    return out


def worker_pids(server: Any, model: str) -> list[int]:
    r = server.client.management("GET", f"/models/{model}")
    return [int(w["pid"]) for v in r.json() for w in v.get("workers", []) if w.get("pid")]


def bench_servers(store: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from graft.torchserve.launcher import ServeConfig, TorchServe, free_ports

    inf, mgmt, met, g1, g2 = free_ports(5)
    cfg = ServeConfig(model_store=store, workdir=work / "ts", inference_address=f"http://127.0.0.1:{inf}",
                      management_address=f"http://127.0.0.1:{mgmt}", metrics_address=f"http://127.0.0.1:{met}",
                      grpc_inference_port=g1, grpc_management_port=g2)  # fmt: skip
    bodies = jpegs(args.images)
    results: dict[str, Any] = {}
    with TorchServe(cfg) as server:
        server.wait_ready(timeout=600)
        assert server.proc is not None
        frontend = server.proc.pid
        headers = {**server.headers(), "Content-Type": "image/jpeg"}
        for model in args.servers:  # unmeasured: the frontend's JIT warms up before any model is measured
            load(f"{server.inference_url}/predictions/{model}", headers, bodies, max(args.concurrency), 0,
                 args.settle, args.client)  # fmt: skip
        workers = {m: worker_pids(server, m) for m in args.servers}
        rows: dict[str, list[dict[str, Any]]] = {m: [] for m in args.servers}
        # Concurrency outside, models inside in alternating order: on a shared machine, load drifts; the models
        # compared at one concurrency are measured back to back, and neither is always first.
        for n, c in enumerate(args.concurrency):
            for model in args.servers if n % 2 == 0 else list(reversed(args.servers)):
                pids = workers[model]
                before = (time.process_time(), cpu_seconds(frontend), sum(cpu_seconds(p) for p in pids))
                inside = handler_seconds(server, model)
                row = load(f"{server.inference_url}/predictions/{model}", headers, bodies, c, args.warmup,
                           args.duration, args.client)  # fmt: skip
                after = (time.process_time(), cpu_seconds(frontend), sum(cpu_seconds(p) for p in pids))
                # CPU over warm-up + window, per image completed in the window scaled to the same span
                images = max(1.0, row["img_s"] * (args.warmup + args.duration))
                spent = zip(("client", "frontend", "workers"), after, before, strict=True)
                row["cpu_ms_per_img"] = {k: 1000 * (a - b) / images for k, a, b in spent}
                row["loadavg_1m"] = os.getloadavg()[0]
                after_h = handler_seconds(server, model)
                served = max(1.0, after_h["images"] - inside["images"])
                row["handler_ms_per_img"] = {k: 1000 * (after_h[k] - inside[k]) / served
                                             for k in ("preprocess", "inference")}  # fmt: skip
                log.info("%s c=%d: %.1f img/s p99 %.0f ms errors %d cpu ms/img %s load %.1f", model, c, row["img_s"],
                         row["p99_ms"], row["errors"], {k: round(v, 1) for k, v in row["cpu_ms_per_img"].items()},
                         row["loadavg_1m"])  # fmt: skip
                rows[model].append(row)
        for model in args.servers:
            results[model] = {"rows": rows[model],
                              "peak_rss_mb": {f"worker {p}": vm_hwm_mb(p) for p in workers[model]}}  # fmt: skip
        results["frontend_peak_rss_mb"] = vm_hwm_mb(frontend)
    return results


# --------------------------------------------------------------------------- report


def table(results: dict[str, Any], ceiling: dict[str, Any], alone: dict[str, Any], args: argparse.Namespace) -> str:
    conc = args.concurrency
    lines = ["| server | concurrency | img/s | p50 ms | p95 ms | p99 ms | errors | CPU ms/img: client | frontend"
             " | workers | in the handler, ms/img: preprocess | model | load 1m |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for model in args.servers:
        for r in results[model]["rows"]:
            cpu = r["cpu_ms_per_img"]
            lines.append(f"| {model} | {r['concurrency']} | {r['img_s']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f}"
                         f" | {r['p99_ms']:.0f} | {r['errors']} | {cpu['client']:.1f} | {cpu['frontend']:.1f}"
                         f" | {cpu['workers']:.1f} | {r['handler_ms_per_img']['preprocess']:.2f}"
                         f" | {r['handler_ms_per_img']['inference']:.2f} | {r['loadavg_1m']:.1f} |")  # fmt: skip
    lines += ["", "| in-process (batch 8, decode on 1 thread, model on all) | img/s | decode + preprocess ms/img"
              " wall (CPU) | model ms/img wall (CPU) | val accuracy | peak RSS MB |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for v, c in ceiling.items():
        acc = "-" if c["val_accuracy"] is None else f"{c['val_accuracy']:.4f}"
        lines.append(f"| {v} ({c['threads']} threads) | {c['img_s']:.1f} | {c['decode_preprocess_ms']:.2f}"
                     f" ({c['decode_preprocess_cpu_ms']:.2f}) | {c['model_ms']:.2f} ({c['model_cpu_ms']:.2f}) | {acc}"
                     f" | {c['peak_rss_mb']:.0f} |")  # fmt: skip
    lines += ["", f"Model alone (ONNX Runtime, batch {alone['batch']}, {alone['threads']} threads, median of"
              f" {len(alone['rounds']['fp32'])} alternating rounds): FP32 {alone['fp32']:.1f} img/s, INT8"
              f" {alone['int8']:.1f} img/s, **{alone['int8'] / alone['fp32']:.2f}x**; peak RSS"
              f" {alone['peak_rss_mb']:.0f} MB."]  # fmt: skip

    def rate(model: str, i: int) -> float:
        return float(results[model]["rows"][i]["img_s"])

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b > 0 else "n/a"

    pairs = [("int8 / onnx (HTTP)", "ours_int8", "ours_onnx"), ("onnx / stock", "ours_onnx", "stock"),
             ("torch / stock", "ours_torch", "stock")]  # fmt: skip
    lines += ["", "| ratio | " + " | ".join(f"c={c}" for c in conc) + " |", "|---|" + "---:|" * len(conc)]
    for name, num, den in pairs:
        if num in results and den in results:
            lines.append(f"| {name} | " + " | ".join(ratio(rate(num, i), rate(den, i)) for i in range(len(conc)))
                         + " |")  # fmt: skip
    lines += ["", "| process | peak RSS MB |", "|---|---:|",
              f"| frontend (java) | {results['frontend_peak_rss_mb']:.0f} |"]  # fmt: skip
    for model in args.servers:
        for proc, mb in results[model]["peak_rss_mb"].items():
            lines.append(f"| {model} {proc} | {mb:.0f} |")
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None, allow_abbrev=False)
    p.add_argument("--servers", nargs="+", choices=SERVERS, default=["ours_onnx", "ours_int8"])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--duration", type=float, default=20, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=3, help="unmeasured seconds before each point")
    p.add_argument("--settle", type=float, default=10, help="unmeasured seconds per model before any point")
    p.add_argument("--workers", type=int, default=None, help="per model (default 2; 1 with --runtimes)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--delay-ms", type=int, default=20)
    p.add_argument("--images", type=int, default=120, help="distinct JPEGs cycled through")
    p.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp", help="the load generator's HTTP client")
    p.add_argument("--out", type=Path, default=None, help="also write the raw results as JSON here")
    p.add_argument("--run", type=Path, default=None,
                   help="an ants/bees run folder to serve (default: train one with graft's default recipe)")
    p.add_argument("--runtimes", action="store_true", help="TorchServe vs graft's KServe runtime (issue 24)")
    p.add_argument("--backends", nargs="+", choices=["onnx", "torch"], default=["onnx"], help="with --runtimes")
    p.add_argument("--rounds", type=int, default=2, help="with --runtimes: A, B / B, A rounds (fresh starts)")
    p.add_argument("--in-process", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--model-only", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--variant", default="onnx", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.workers = args.workers or (1 if args.runtimes else 2)
    if args.in_process:
        print(json.dumps(in_process(args.in_process, args.variant, args.batch, args.duration, args.images)))
        return 0
    if args.model_only:
        print(json.dumps(model_only(args.model_only, args.batch, 2.0, 5)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    log.info("load average at start: %s", os.getloadavg())
    if args.runtimes:
        from bench.serve_runtimes import compare

        return compare(args, ants_bees_run)
    with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmp:
        work = Path(tmp)
        run, imagenet, store = build_store(work, args.servers, args.workers, args.batch, args.delay_ms, args.run)
        alone = child("--model-only", str(run), "--batch", str(args.batch))
        log.info("model alone: %s", {k: v for k, v in alone.items() if k != "rounds"})
        variants = [v for v, s in (("onnx", "ours_onnx"), ("int8", "ours_int8"), ("torch", "ours_torch"))
                    if s in args.servers]  # fmt: skip
        common = ["--batch", str(args.batch), "--duration", str(args.duration), "--images", str(args.images)]
        ceiling = {v: child("--in-process", str(imagenet if v == "torch" else run), "--variant", v, *common)
                   for v in variants}  # fmt: skip
        log.info("in-process: %s", ceiling)
        results = bench_servers(store, work, args)
        log.info("load average at end: %s", os.getloadavg())
    dump(args.out, {"args": vars(args), "servers": results, "in_process": ceiling, "model_alone": alone,
                    "loadavg_end": os.getloadavg()})  # fmt: skip
    print(table(results, ceiling, alone, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
