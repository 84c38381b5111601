"""What the per-label sample counts cost as the store grows: the triggers' table against a GROUP BY (not a test).

Every upload request reads its labels' counts (the balanced holdout split), and ``GET /v1/samples/stats`` reads
them all. Since schema 11 SQLite triggers keep them (``admin/store/sample_tallies.py``); the baseline, in the same
run on the same file, is the ``GROUP BY`` over the covering ``(label, split)`` index that the store used before.
Rows are inserted by SQL (10 labels, 20% holdout), so the intake's decoding is left out; inserts are timed with
the triggers and, on a second file, without them (what the triggers add to each stored sample).

    .venv/bin/python bench/sample_counts.py --levels 1000,10000,100000,1000000 --json bench/results/sample_counts.json
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from admin.store.db import Database
from admin.store.samples import SampleStore

log = logging.getLogger("bench.sample_counts")
GROUPED = "SELECT label, split, COUNT(*) AS n FROM samples GROUP BY label, split"
ONE_LABEL = "SELECT split, COUNT(*) AS n FROM samples WHERE label = ? GROUP BY split"
INSERT = ("INSERT INTO samples (sha256, label, split, path, size, format, width, height, received_at, split_reason) "
          "VALUES (?, ?, ?, ?, 1, 'PNG', 28, 28, '2026-01-01', 'hash split')")  # fmt: skip


def _fill(db: Database, start: int, stop: int) -> float:
    """Insert rows start..stop in transactions of 1,000; seconds per row."""
    t0 = time.perf_counter()
    for lo in range(start, stop, 1000):
        with db.tx() as conn:
            conn.executemany(INSERT, [(f"{i:064x}", f"label{i % 10}", "holdout" if i % 5 == 0 else "train",
                                       f"samples/{i}.png") for i in range(lo, min(stop, lo + 1000))])  # fmt: skip
    return (time.perf_counter() - t0) / max(1, stop - start)


def _ms(call: Callable[[], Any], repeat: int = 30) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 3)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", default="1000,10000,100000")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    work = Path(tempfile.mkdtemp(prefix="sample_counts-"))
    db, bare = Database(work / "tallies.sqlite3"), Database(work / "bare.sqlite3")
    bare.execute("DROP TRIGGER samples_tally_insert")  # the baseline file: inserts without the triggers
    store, done, rows = SampleStore(db, work), 0, []
    for level in [int(x) for x in args.levels.split(",") if x]:
        per_row, per_row_bare = _fill(db, done, level), _fill(bare, done, level)
        done = level
        assert store.counts() == grouped_counts(db), "the tallies equal the GROUP BY"
        row = {"stored": level,
               "insert_us_per_row": round(per_row * 1e6, 2),
               "insert_us_per_row_no_triggers": round(per_row_bare * 1e6, 2),
               "all_counts_ms": _ms(store.counts), "all_counts_group_by_ms": _ms(lambda: db.all(GROUPED)),
               "one_label_ms": _ms(lambda: store.counts_of(["label3"])),
               "one_label_group_by_ms": _ms(lambda: db.all(ONE_LABEL, ("label3",)))}  # fmt: skip
        log.info("%s", row)
        rows.append(row)
    report = {"rows": rows, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    log.info("peak RSS %.1f MB", report["peak_rss_mb"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def grouped_counts(db: Database) -> dict[str, dict[str, int]]:
    """The counts as the store computed them before schema 11: a GROUP BY over every row (tests compare too)."""
    out: dict[str, dict[str, int]] = {}
    for r in db.all(GROUPED):
        out.setdefault(r["label"], {"train": 0, "holdout": 0})[r["split"]] = int(r["n"])
    return out


if __name__ == "__main__":
    raise SystemExit(main())
