"""What the data check costs a job, against what the gate already spends on the same champion.

Reads one round of a ``bench/loop_truth.py --workdir`` loop (its SQLite file, snapshots and run folders) and times,
in this process, (1) the data check as a job runs it (``check_new_samples``: the champion on the new samples and
the older holdout images) and (2) the gate's share for the same champion (its predictions on the fair holdout),
each with nothing cached, median of ``--repeat`` runs; peak RSS of the process beside them.

    .venv/bin/python bench/loop_truth.py --domains fashion-mnist --seeds 1 --workdir /tmp/lt/f0 ...
    .venv/bin/python bench/label_check_cost.py /tmp/lt/f0/fashion-mnist/seed0 --round 2 --champion v1
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

from admin.domain.fairness import fair_holdout, seen_by
from admin.domain.judge import default_evaluate, evaluate_whole
from admin.domain.label_check import check_new_samples
from admin.store.db import Database
from admin.store.rows import ModelVersion
from admin.store.samples import SampleStore
from graft.core.artifact import read_card
from graft.core.manifest import read_manifest
from graft.core.util import utc_now


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("loop", type=Path, help="one loop's folder (WORKDIR/DOMAIN/seedN)")
    p.add_argument("--round", type=int, required=True, help="the round whose job is measured (r<R>/manifest.json)")
    p.add_argument("--champion", required=True, help="the run folder in service at that round (e.g. v1)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    store = SampleStore(Database(args.loop / "admin.sqlite3"), args.loop)
    run = args.loop / args.champion
    items, _ = read_manifest(args.loop / f"r{args.round}" / "manifest.json")
    holdout = [i for i in items if i.split == "holdout"]
    in_round = {i.path.resolve() for i in items}
    upto = max(s.seq for s in store.snapshot(store.max_seq()) if s.path in in_round)  # the round's snapshot
    card = read_card(run)
    source = Path(str(card.lineage.dataset_path))  # a job's snapshot manifest; the first model's folder has none
    known = {i.path.resolve() for i in read_manifest(source)[0]} if source.is_file() else set()
    since = max((s.seq for s in store.snapshot(upto) if s.path in known), default=0)  # the champion's newest sample
    now = utc_now()
    version = ModelVersion(version=args.champion, status="accepted", source="job", run_dir=run, labels=card.labels,
                           max_sample_seq=since, created_at=now, updated_at=now)  # fmt: skip
    fair = [(i.path, i.label) for i in fair_holdout(holdout, [("champion", seen_by(run))]).items]
    check_s, gate_s, checked = [], [], 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        result = check_new_samples(store, None, holdout, upto, version,
                                   lambda r, images: evaluate_whole(r, images, "cpu")[0], 0.01, 500)  # fmt: skip
        check_s.append(time.perf_counter() - t0)
        checked = result.checked
        t0 = time.perf_counter()
        default_evaluate(run, fair, "cpu")
        gate_s.append(time.perf_counter() - t0)
    report = {"loop": str(args.loop), "round": args.round, "champion": args.champion, "new_checked": checked,
              "older_compared": sum(t.baseline for t in result.labels),
              "fair_holdout": len(fair), "check_s_median": round(statistics.median(check_s), 2),
              "gate_champion_s_median": round(statistics.median(gate_s), 2),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "summary": result.summary()}  # fmt: skip
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
