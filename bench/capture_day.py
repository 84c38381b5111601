"""The capture simulation of bench/reliability.py on its own: ``--hours`` of tiny captures at 100/s against a
1 MB budget, through the handler's writer and the admin's index (with the drift-window rule), on real files and
SQLite. No service, no network; one process (0.5 h took 1,687 s on the shared 2-core test machine at load 20;
once the index holds its cap, 60-90 s a simulated 10 minutes at load 3-8: a day is 3-4 hours). The database's
size every simulated 10 minutes is logged as it goes, so a run stopped early still has its curve.

    PYTHONPATH=$PWD .venv/bin/python bench/capture_day.py --hours 0.25 --json bench/results/capture_day_0.25h.json

``--timings`` adds where the wall time went, per capture: the admin's indexing pass (decoding and fingerprinting
every capture, its rows), its sweep (pruned rows and the cap) and the wait for the handler's writer thread. The
index's own methods are wrapped with timers here; nothing of the admin changes. It says why a day cannot be made
much faster without measuring something else: 8.64 million captures each cost the real indexer a decode and a
fingerprint (about 0.7 ms here) and its inserts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._attacks import capture_day


def _time_the_index(spent: defaultdict[str, float]) -> None:
    """Wrap the index's pass, its sweep and its fingerprinting, and the bench's wait for the writer, with timers."""
    from admin.domain.captures import CaptureIndex
    from bench import _attacks

    def timed(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0

        return run

    CaptureIndex.sync = timed("index pass", CaptureIndex.sync)  # type: ignore[method-assign]
    CaptureIndex._fingerprint = timed("of which decode and fingerprint", CaptureIndex._fingerprint)  # type: ignore[method-assign]
    CaptureIndex.sweep = timed("sweep (pruned rows, the cap)", CaptureIndex.sweep)  # type: ignore[method-assign]
    _attacks.wait_for = timed("wait for the writer thread", _attacks.wait_for)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--hours", type=float, default=0.25, help="simulated hours (24: a day, 3-4 h here)")
    ap.add_argument("--rate", type=int, default=100, help="captures a simulated second")
    ap.add_argument("--budget-mb", type=int, default=1)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--timings", action="store_true", help="where the wall time went, per capture")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("bench.attacks").setLevel(logging.INFO)  # the size curve as it runs
    spent: defaultdict[str, float] = defaultdict(float)
    if args.timings:
        _time_the_index(spent)
    row = capture_day(args.hours, args.rate, args.budget_mb)
    if spent:
        row["ms_per_capture"] = {k: round(1000 * v / max(1, row["captures"]), 3) for k, v in spent.items()}
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    row["machine"] = f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"
    print(json.dumps(row, indent=2))
    if args.json:
        args.json.write_text(json.dumps(row, indent=2) + "\n")
    return 0 if row["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
