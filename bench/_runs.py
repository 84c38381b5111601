"""Running one training per process, so each wall time and peak RSS is its own."""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def train_here(settings: dict[str, Any]) -> dict[str, Any]:
    """``graft train`` with these settings in this process: headline numbers, wall time, peak RSS."""
    from training import TrainConfig, fit

    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    result = fit(TrainConfig(**settings))
    wall = time.perf_counter() - t0
    metrics = json.loads((Path(settings["output"]) / "metrics.json").read_text())
    recipe = json.loads((Path(settings["output"]) / "model.json").read_text())["recipe"]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall_s": round(wall, 1),
        "val_accuracy": round(result.val_accuracy, 4),
        "epochs_run": metrics["epochs_run"],
        "feature_cache": result.used_feature_cache,
        "trainable_stages": recipe.get("trainable_stages"),
        "auto": recipe.get("auto"),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }


def spawn(module: str, args: list[str]) -> dict[str, Any]:
    """``python -m MODULE ARGS`` from the checkout (so its code wins), answering one JSON line."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, check=False, cwd=REPO, env=env
    )
    if proc.returncode != 0:
        raise SystemExit(f"{module} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    answer: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return answer


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only; "
        f"load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min)"
    )


def finish_report(report: dict[str, Any], path: Path | None) -> None:
    """Add the process's peak RSS, print the report, and write it as JSON to ``path`` when given."""
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
