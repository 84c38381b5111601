"""Data-parallel training benchmark: ``graft train`` in 1 process vs 2 processes under torchrun (gloo, CPU).

The same data (a ../shared ants/bees subset), seed and recipe, for ``--recipe head`` and ``--recipe auto``:
wall time (launcher included), CPU time and peak RSS of every process (each rank reports its own
``getrusage``), and the validation accuracy of both. The 1-process run gets as many threads as the two
ranks together (OMP_NUM_THREADS), so both use the same cores. On a machine whose cores other work shares,
say so beside the numbers: the wall times move with the load (printed with them).

    .venv/bin/python bench/distributed.py [--per-class 40] [--epochs 5] [--json bench/results/distributed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
DATA = SHARED / "data" / "hymenoptera"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet.pth"

# Runs graft's CLI, then writes this rank's peak RSS and CPU time where the benchmark reads them.
_RANK_REPORT = """import json, os, resource, sys
from graft.cli import main
code = main(sys.argv[1:])
u = resource.getrusage(resource.RUSAGE_SELF)
out = os.path.join(os.environ["GRAFT_BENCH_OUT"], "rank%s.json" % os.environ.get("RANK", "0"))
json.dump({"peak_rss_mib": u.ru_maxrss / 1024, "cpu_s": u.ru_utime + u.ru_stime}, open(out, "w"))
sys.exit(code)
"""


def run(recipe: str, procs: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out, reports = work / f"{recipe}-{procs}", work / f"{recipe}-{procs}-ranks"
    reports.mkdir()
    script = work / "rank_report.py"
    script.write_text(_RANK_REPORT)
    threads = max(1, args.cores // procs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GRAFT_BENCH_OUT": str(reports), "PYTHONPATH": str(REPO)}
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    launch = [torchrun, "--standalone", f"--nproc-per-node={procs}"] if procs > 1 else [sys.executable]
    cmd = [*launch, str(script), "train", "--data", str(DATA), "--backbone", "mobilenet_v2", "--weights", str(WEIGHTS),
           "--max-per-class", str(args.per_class), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--recipe", recipe, "--seed", "0", "--output", str(out)]  # fmt: skip
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{recipe} x{procs} failed:\n{proc.stderr[-3000:]}")
    ranks = [json.loads(p.read_text()) for p in sorted(reports.glob("rank*.json"))]
    card = json.loads((out / "model.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "recipe": recipe,
        "processes": procs,
        "threads_per_process": threads,
        "wall_s": round(wall, 1),
        "cpu_s_per_process": [round(r["cpu_s"], 1) for r in ranks],
        "cpu_s_total": round(sum(r["cpu_s"] for r in ranks), 1),
        "peak_rss_mib_per_process": [round(r["peak_rss_mib"]) for r in ranks],
        "val_accuracy": metrics["val_accuracy"],
        "val_loss": metrics["val_loss"],
        "epochs_run": metrics["epochs_run"],
        "chosen_trainable_stages": card["recipe"].get("trainable_stages"),
        "distributed": card["recipe"].get("distributed"),
        "num_train": card["lineage"]["num_train"],
        "num_val": card["lineage"]["num_val"],
        "load_1min_before": round(load, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--per-class", type=int, default=40, help="images per class and split (default 40)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--cores", type=int, default=2, help="threads of the 1-process run = sum over the ranks")
    ap.add_argument("--recipes", default="head,auto")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "distributed.json")
    args = ap.parse_args()
    if not DATA.is_dir() or not WEIGHTS.is_file():
        print(f"needs {DATA} and {WEIGHTS} (../shared)", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other work: see load_1min_before), "
        f"{platform.python_implementation()} {platform.python_version()}",
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "runs": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="graft-dist-bench-") as tmp:
        for recipe in args.recipes.split(","):
            for procs in (1, 2):
                rows.append(run(recipe, procs, args, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
                args.json.write_text(json.dumps(result, indent=2) + "\n")  # after every run: a long run keeps its rows
    print("| recipe | processes | wall s | CPU s (per process) | peak RSS MiB (per process) | val acc |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['processes']} | {r['wall_s']} | {r['cpu_s_per_process']} | "
              f"{r['peak_rss_mib_per_process']} | {r['val_accuracy']:.4f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
