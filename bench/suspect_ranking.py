"""Does the data check's ranking put wrong labels first? Ants/bees photos, a real model, several seeds.

Per seed: a champion is trained on a few photos per class (graft's default recipe, offline ImageNet weights);
a batch of other training photos arrives with ``--flip`` ants uploaded as bees (part 12's wrong labels). The
champion predicts the batch as the data check does (``evaluate_whole``); the photos it disagrees with are the
suspects. Two orders of the suspects are compared on the same photos: by sample id (the content hash: how the
check listed them before) and by the probability the champion gives the label each was uploaded with
(``label_scores``, smallest first: how it lists them now). For each: how many of the first k are wrong labels
(k = the wrong labels among the suspects), and where the right labels the check listed sit.

    .venv/bin/python bench/suspect_ranking.py --seeds 5 --json bench/results/suspect_ranking.json

Needs ../shared (the ants/bees photos and the ImageNet weights); reads them in place.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from admin.domain.judge import evaluate_whole, label_scores
from admin.domain.label_check import Suspect, ranked
from training import TrainConfig, fit

log = logging.getLogger("bench.suspect_ranking")
PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hymenoptera" / "train"


def _link(paths: list[Path], folder: Path, label: str) -> None:
    (folder / label).mkdir(parents=True, exist_ok=True)
    for p in paths:
        (folder / label / p.name).symlink_to(p)


def one_seed(seed: int, per_class: int, batch: int, flip: int, work: Path) -> dict[str, Any]:
    rng = random.Random(seed)
    ants, bees = (sorted((PHOTOS / c).glob("*.jpg")) for c in ("ants", "bees"))
    rng.shuffle(ants)
    rng.shuffle(bees)
    data = work / f"seed{seed}" / "data"
    _link(ants[:per_class], data, "ants")
    _link(bees[:per_class], data, "bees")
    run = work / f"seed{seed}" / "champion"
    t0 = time.perf_counter()
    fit(TrainConfig(data=data, output=run, seed=seed))
    train_s = time.perf_counter() - t0
    new_ants, new_bees = ants[per_class : per_class + batch], bees[per_class : per_class + batch]
    uploads = [(p, "bees") for p in new_ants[:flip]] + [(p, "ants") for p in new_ants[flip:]]
    uploads += [(p, "bees") for p in new_bees]
    wrong = {p for p in new_ants[:flip]}
    t0 = time.perf_counter()
    predicted, _ = evaluate_whole(run, uploads, "cpu")
    # As the check lists them: by sample id (the content hash), then in the product's own order (ranked()).
    paths = {hashlib.sha256(p.read_bytes()).hexdigest(): p for p, _ in uploads}
    labels = {p: label for p, label in uploads}
    by_id = sorted((Suspect(i, labels[p], said, "train") for (i, p), said in
                    zip(paths.items(), predicted, strict=True) if said not in (None, labels[p])),
                   key=lambda s: s.id)  # fmt: skip
    ordered = ranked(by_id, paths, lambda images: label_scores(run, images, "cpu"))
    check_s = time.perf_counter() - t0
    wrong_ids = {i for i, p in paths.items() if p in wrong}
    k = sum(s.id in wrong_ids for s in by_id)

    def measure(order: list[Suspect]) -> dict[str, Any]:
        right_ranks = [n + 1 for n, s in enumerate(order) if s.id not in wrong_ids]
        return {"wrong_in_first_k": sum(s.id in wrong_ids for s in order[:k]),
                "right_in_last_places": sum(r > k for r in right_ranks),  # the places a perfect order gives them
                "right_label_ranks": right_ranks}  # fmt: skip

    return {"seed": seed, "suspects": len(by_id), "wrong_listed": k, "wrong_uploaded": flip,
            "right_listed": len(by_id) - k, "by_id": measure(by_id), "ranked": measure(ordered),
            "train_s": round(train_s, 1), "check_and_scores_s": round(check_s, 1)}  # fmt: skip


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    k = sum(r["wrong_listed"] for r in rows)
    for order in ("by_id", "ranked"):
        ranks = [rank for r in rows for rank in r[order]["right_label_ranks"]]
        out[order] = {"wrong_in_first_k": sum(r[order]["wrong_in_first_k"] for r in rows), "k": k,
                      "right_in_last_places": sum(r[order]["right_in_last_places"] for r in rows),
                      "right_label_mean_rank": round(statistics.mean(ranks), 1) if ranks else None}  # fmt: skip
    out["suspects"] = sum(r["suspects"] for r in rows)
    out["right_listed"] = sum(r["right_listed"] for r in rows)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--per-class", type=int, default=20, help="the champion's photos per class (default 20)")
    p.add_argument("--batch", type=int, default=60, help="new photos per class (default 60)")
    p.add_argument("--flip", type=int, default=20, help="ants uploaded as bees among them (default 20)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not PHOTOS.is_dir():
        raise SystemExit(f"{PHOTOS} is missing: this benchmark reads ../shared's ants/bees photos")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="graft-suspects-") as tmp:
        rows = []
        for seed in range(args.seeds):
            rows.append(one_seed(seed, args.per_class, args.batch, args.flip, Path(tmp)))
            log.warning("seed %d: %s", seed, json.dumps(rows[-1]))
    report = {"machine": "2-core VM, CPU only", "backbone": "efficientnet_lite0 (graft's default recipe)",
              "per_class": args.per_class, "batch_per_class": args.batch, "flipped": args.flip, "seeds": rows,
              "pooled": summarize(rows), "wall_s": round(time.perf_counter() - t0, 1),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # fmt: skip
    print(json.dumps(report["pooled"], indent=2), f"\nwall {report['wall_s']} s, peak RSS {report['peak_rss_mb']} MB")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
