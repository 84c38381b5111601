"""TorchServe vs graft's KServe runtime in one run: ``bench/serve.py --runtimes`` (issue 24).

Same model, same archive (one per backend, graft's default serving settings: one worker, batch 8,
20 ms delay), same images, same load generator. TorchServe gets the raw JPEG body on
``/predictions/NAME``; the KServe runtime gets the same bytes as one OIP v2 BYTES element (the binary
extension, no base64). Both with token authentication on. Each round starts every runtime afresh (cold
start to first answer), warms it (``--settle`` s at the highest concurrency, unmeasured), measures each
concurrency, reads the peak RSS of every process, and stops it; rounds alternate the order (A, B, then
B, A) so a change of machine load hits both. Results: ``--out`` (JSON) and a Markdown report beside it.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench.kserve_runtime import first_answer, runtime, v2_binary
from bench.load import cpu_seconds, dump, load, vm_hwm_mb

log = logging.getLogger("bench.serve_runtimes")
RUNTIMES = ("torchserve", "kserve")


def _tree(pid: int) -> list[int]:
    return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]


def _role(pid: int) -> str:
    p = psutil.Process(pid)
    cmd = " ".join(p.cmdline())
    return "java frontend" if "java" in p.name() else ("worker" if "model_service_worker" in cmd else p.name())


def _measure(name: str, url: str, headers: dict[str, str], bodies: list[bytes], pids: Callable[[], list[int]],
             args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """Warm-up, every concurrency, then the peak RSS of every process of the server."""
    load(url, headers, bodies, max(args.concurrency), 0, args.settle, args.client)  # unmeasured
    rows = []
    for c in args.concurrency:
        procs = pids()
        before = sum(cpu_seconds(p) for p in procs)
        row = load(url, headers, bodies, c, args.warmup, args.duration, args.client)
        images = max(1.0, row["img_s"] * (args.warmup + args.duration))
        row["server_cpu_ms_per_img"] = 1000 * (sum(cpu_seconds(p) for p in procs) - before) / images
        row["loadavg_1m"] = os.getloadavg()[0]
        log.info("%s c=%d: %.1f img/s p50 %.0f p99 %.0f ms errors %d server CPU %.1f ms/img load %.1f", name, c,
                 row["img_s"], row["p50_ms"], row["p99_ms"], row["errors"], row["server_cpu_ms_per_img"],
                 row["loadavg_1m"])  # fmt: skip
        rows.append(row)
    rss = {f"{_role(p)} {p}": round(vm_hwm_mb(p), 1) for p in pids()}
    return {"rows": rows, "peak_rss_mb": rss, "peak_rss_total_mb": round(sum(rss.values()), 1)}


def _torchserve(store: Path, work: Path, model: str, bodies: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    from graft.torchserve.launcher import ServeConfig, TorchServe, free_ports

    inf, mgmt, met, g1, g2 = free_ports(5)
    cfg = ServeConfig(model_store=store, workdir=work, inference_address=f"http://127.0.0.1:{inf}",
                      management_address=f"http://127.0.0.1:{mgmt}", metrics_address=f"http://127.0.0.1:{met}",
                      grpc_inference_port=g1, grpc_management_port=g2)  # fmt: skip
    started = time.perf_counter()
    with TorchServe(cfg) as server:
        assert server.proc is not None
        proc = server.proc
        server.wait_ready(timeout=900)
        url = f"{server.inference_url}/predictions/{model}"
        headers = {**server.headers(), "Content-Type": "image/jpeg"}
        cold = first_answer(url, bodies[0], headers, started, lambda: proc.poll() is None)
        out = _measure(f"torchserve {model}", url, headers, bodies, lambda: _tree(proc.pid), args)
    return {"cold_start_s": round(cold, 2), **out}


def _kserve(store: Path, work: Path, model: str, bodies: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    framed = [v2_binary(b) for b in bodies]
    payloads, headers = [f for f, _ in framed], framed[0][1]
    with runtime(store, model, "1", work) as rt:
        url = f"{rt.url}/v2/models/{model}/infer"
        headers = {**rt.headers, **headers}
        cold = first_answer(url, payloads[0], headers, rt.started, lambda: rt.proc.poll() is None)
        out = _measure(f"kserve {model}", url, headers, payloads, lambda: _tree(rt.proc.pid), args)
    return {"cold_start_s": round(cold, 2), **out}


def compare(args: argparse.Namespace, train: Callable[[Path], Path]) -> int:
    from bench.serve import jpegs
    from training.export import build_mar, export_onnx

    bodies = jpegs(args.images)
    loads: list[list[float]] = [list(os.getloadavg())]
    results: dict[str, Any] = {r: {b: [] for b in args.backends} for r in RUNTIMES}
    with tempfile.TemporaryDirectory(prefix="graft-bench-runtimes-") as tmp:
        work = Path(tmp)
        run = args.run or train(work)
        if "onnx" in args.backends and not (run / "model.onnx").is_file():
            export_onnx(run)  # model.onnx into the run folder, as graft export does
        stores = {}
        for backend in args.backends:  # one store per backend: each server loads one model
            stores[backend] = work / f"store-{backend}"
            build_mar(run, stores[backend], f"ours_{backend}", "1",
                      {"backend": backend, "batch_size": args.batch, "max_batch_delay_ms": args.delay_ms,
                       "workers": args.workers})  # fmt: skip
        for r in range(args.rounds):
            for backend in args.backends:
                for name in RUNTIMES if r % 2 == 0 else tuple(reversed(RUNTIMES)):
                    fn = _torchserve if name == "torchserve" else _kserve
                    got = fn(stores[backend], work / f"{name}-{backend}-{r}", f"ours_{backend}", bodies, args)
                    log.info("%s %s round %d: cold start %.1f s, peak RSS %s", name, backend, r, got["cold_start_s"],
                             got["peak_rss_mb"])  # fmt: skip
                    results[name][backend].append({"round": r, **got})
                    loads.append(list(os.getloadavg()))
    command = " ".join(["bench/serve.py", *sys.argv[1:]])
    doc = {"command": command, "args": vars(args), "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only",
           "loadavg_samples": loads, "results": results}  # fmt: skip
    dump(args.out, doc)
    text = report(doc, args)
    if args.out:
        args.out.with_suffix(".md").write_text(text + "\n")
    print(text)
    return 0


def _mean(runs: list[dict[str, Any]], i: int, key: str) -> float:
    return statistics.fmean(float(x["rows"][i][key]) for x in runs)


def report(doc: dict[str, Any], args: argparse.Namespace) -> str:
    res, conc = doc["results"], args.concurrency
    one = [x[0] for x in doc["loadavg_samples"]]
    lines = [f"Command: `{doc.get('command', 'bench/serve.py --runtimes')}`", "",
             f"Machine: {doc['machine']}; 1-minute load average from {min(one):.1f} to {max(one):.1f} during the"
             f" run. {args.rounds} rounds (fresh starts, order alternated), {args.duration:.0f} s measured per"
             f" point after {args.warmup:.0f} s warm-up, {args.images} real ants/bees JPEGs; archive: batch"
             f" {args.batch}, delay {args.delay_ms} ms, {args.workers} worker(s).", "",
             "| runtime | backend | concurrency | img/s (per round) | mean img/s | p50 ms | p99 ms | errors"
             " | server CPU ms/img | load 1m |", "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for backend in args.backends:
        for name in RUNTIMES:
            runs = res[name][backend]
            for i, c in enumerate(conc):
                per = ", ".join(f"{x['rows'][i]['img_s']:.1f}" for x in runs)
                errors = sum(x["rows"][i]["errors"] for x in runs)
                lines.append(f"| {name} | {backend} | {c} | {per} | {_mean(runs, i, 'img_s'):.1f}"
                             f" | {_mean(runs, i, 'p50_ms'):.0f} | {_mean(runs, i, 'p99_ms'):.0f} | {errors}"
                             f" | {_mean(runs, i, 'server_cpu_ms_per_img'):.1f} | {_mean(runs, i, 'loadavg_1m'):.1f} |")
    lines += ["", "| backend | KServe / TorchServe img/s | " + " | ".join(f"c={c}" for c in conc) + " |",
              "|---|---|" + "---:|" * len(conc)]  # fmt: skip
    for backend in args.backends:
        ks, ts = res["kserve"][backend], res["torchserve"][backend]
        ratios = [_mean(ks, i, "img_s") / max(1e-9, _mean(ts, i, "img_s")) for i in range(len(conc))]
        lines.append(f"| {backend} | mean of rounds | " + " | ".join(f"{x:.2f}" for x in ratios) + " |")
    lines += ["", "| runtime | backend | round | cold start to first answer s | peak RSS MB, total | per process |",
              "|---|---|---:|---:|---:|---|"]  # fmt: skip
    for backend in args.backends:
        for name in RUNTIMES:
            for x in res[name][backend]:
                procs = ", ".join(f"{k.rsplit(' ', 1)[0]} {v:.0f}" for k, v in x["peak_rss_mb"].items())
                lines.append(f"| {name} | {backend} | {x['round']} | {x['cold_start_s']:.1f}"
                             f" | {x['peak_rss_total_mb']:.0f} | {procs} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - run through bench/serve.py --runtimes
    raise SystemExit("run: .venv/bin/python bench/serve.py --runtimes")
