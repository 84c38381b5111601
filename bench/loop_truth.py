"""Is the loop's one decision right? Simulated retraining rounds judged against truth.

Two domains: Fashion-MNIST (Debian's ``dataset-fashion-mnist``; truth: t10k images, ``--fm-truth`` of them)
and ants/bees (``../shared``; truth: its whole validation set, 153 photos, which the loop never uploads).
Each seed starts from a few images per class (a first model trained with ``graft train``'s defaults), then
uploads a labelled batch per round through the admin's intake, retrains and gates (bench/_loop_sim.py). Every
champion and candidate is scored on the truth set; every gate decision is recorded under graft's first rule
(raw accuracy on the whole holdout, tolerance 0) and under the current gate, side by side on the same
rounds. Not a timed test; the README reports its tables.

    .venv/bin/python bench/loop_truth.py --seeds 3 --json bench/results/loop_truth.json \\
        --markdown bench/results/loop_truth.md          # about an hour on 2 cores
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import resource
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from admin.domain.gate import GateRule
from admin.domain.paired import binom_cdf_half
from bench._loop_sim import Domain, Labelled, Round, encode_png, run_loop, shuffled
from training.fashion_mnist import FASHION_MNIST_DIR, FASHION_MNIST_LABELS, read_idx

log = logging.getLogger("bench.loop_truth")
SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet.pth"


def _per_class(items: list[Labelled], n: int, skip: int = 0) -> list[Labelled]:
    out: list[Labelled] = []
    seen: dict[str, int] = {}
    for data, label in items:
        k = seen.get(label, 0)
        seen[label] = k + 1
        if skip <= k < skip + n:
            out.append((data, label))
    return out


def _rounds(pool: list[Labelled], first: int, per_round: int, rounds: int) -> list[list[Labelled]]:
    return [_per_class(pool, per_round, first + r * per_round) for r in range(rounds)]


def fashion(seed: int, args: argparse.Namespace, truth_dir: Path) -> Domain:
    pixels = read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz")
    targets = read_idx(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz")
    wanted = 10 * (args.first * 2 + args.per_round * args.rounds) * 3  # enough of every class, in a seeded order
    idx = np.random.default_rng(seed).permutation(len(pixels))[:wanted]
    pool = [(encode_png(Image.fromarray(pixels[i], mode="L")), FASHION_MNIST_LABELS[targets[i]]) for i in idx]
    base = _per_class(pool, args.first * 2)
    train = {"backbone": "mobilenet_v2", "weights": str(WEIGHTS)} if WEIGHTS.is_file() else {}
    return Domain("fashion-mnist", _per_class(base, args.first), _per_class(base, args.first, args.first),
                  _rounds(pool, args.first * 2, args.per_round, args.rounds), _fm_truth(truth_dir, args.fm_truth),
                  {**train, "epochs": args.epochs})  # fmt: skip


def _fm_truth(root: Path, n: int) -> list[tuple[Path, str]]:
    pixels = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")[:n]
    targets = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")[:n]
    out = []
    for k, (x, y) in enumerate(zip(pixels, targets, strict=True)):
        path = root / "fashion-mnist" / f"{k:05d}.png"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x, mode="L").save(path)
        out.append((path, FASHION_MNIST_LABELS[int(y)]))
    return out


def ants_bees(seed: int, args: argparse.Namespace) -> Domain:
    root = SHARED / "data" / "hymenoptera"
    files = sorted(p for p in (root / "train").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    pool = shuffled([(p.read_bytes(), p.parent.name) for p in files], seed)
    base = _per_class(pool, args.first * 2)
    truth = sorted((p, p.parent.name) for p in (root / "val").rglob("*.jpg"))
    train = {"backbone": "mobilenet_v2", "weights": str(WEIGHTS), "epochs": args.epochs}
    return Domain("ants-bees", _per_class(base, args.first), _per_class(base, args.first, args.first),
                  _rounds(pool, args.first * 2, args.ab_per_round, args.rounds), truth, train)  # fmt: skip


def poison(d: Domain, round_: int, count: int) -> None:
    """Round ``round_`` uploads ``count`` images of the first label (alphabetically) under the second: wrong labels
    from someone who may upload, stored like any others (nobody corrects them in the later rounds either)."""
    labels = sorted({label for _, label in d.base_train})
    wrong, right = labels[0], labels[1]
    batch, moved = d.rounds[round_ - 1], 0
    for k, (data, label) in enumerate(batch):
        if label == wrong and moved < count:
            batch[k], moved = (data, right), moved + 1
            d.wrong_ids.add(hashlib.sha256(data).hexdigest())  # a sample's id
    d.poisoned[round_] = moved
    log.info("%s: round %d uploads %d %s labelled %s", d.name, round_, moved, wrong, right)


def summarise(rows: list[Round]) -> dict[str, Any]:
    better = [r for r in rows if r.truth_diff >= 0.01]
    worse = [r for r in rows if r.truth_diff <= -0.01]

    def share(items: list[Round], key: str, want: bool) -> dict[str, Any]:
        hit = sum(getattr(r, key) == want for r in items)
        return {"rounds": len(items), "count": hit, "rate": round(hit / len(items), 4) if items else None}

    served = {}
    for key in ("served_truth", "old_served_truth"):
        drops = []
        for r in rows:
            prev = next((p for p in rows if (p.domain, p.seed, p.round) == (r.domain, r.seed, r.round - 1)), None)
            before = getattr(prev, key) if prev else r.champion_truth if r.round == 1 else None
            if before is not None:
                drops.append(round(before - getattr(r, key), 4))
        served[key] = {"largest_drop": max(drops, default=0.0), "largest_end_gap": _end_gap(rows, key),
                       "mean_by_round": _mean_by_round(rows, key)}  # fmt: skip
    # The same counts restricted to rounds whose truth difference is itself significant (exact McNemar on the
    # truth set, p < 0.05): on a small truth set a 1-point difference can be two images of noise.
    clear_better = [r for r in better if r.truth_p is not None and r.truth_p < 0.05]
    clear_worse = [r for r in worse if r.truth_p is not None and r.truth_p < 0.05]
    return {
        "rounds": len(rows),
        "by_chance": by_chance(rows),
        # new: the gate's decision; promoted: the gate's and the data check's (a held candidate is not served).
        "wrong_rejections": {"new": share(better, "new_passed", False), "old": share(better, "old_passed", False),
                             "promoted": share(better, "promoted", False)},
        "wrong_promotions": {"new": share(worse, "new_passed", True), "old": share(worse, "old_passed", True),
                             "promoted": share(worse, "promoted", True)},
        "significant_on_truth": {
            "wrong_rejections": {"new": share(clear_better, "new_passed", False),
                                 "old": share(clear_better, "old_passed", False)},
            "wrong_promotions": {"new": share(clear_worse, "new_passed", True),
                                 "old": share(clear_worse, "old_passed", True)},
        },
        "served": served,
        "holdout": _holdout(rows),
        "data_check": _data_check(rows),
        "unaveraged": _unaveraged(rows),
    }


def _unaveraged(rows: list[Round]) -> dict[str, Any]:
    """Candidates averaged with the champion: how often the refit alone was judged, how often that rejected the
    candidate, and the truth of those rejections (was the averaged candidate, or the refit alone, truly worse?)."""
    judged = [r for r in rows if r.own_truth is not None]
    rejected = [r for r in judged if r.own_rejected]
    return {"judged": len(judged), "rejected": len(rejected),
            "rejected_truly_worse": sum(r.truth_diff <= -0.01 for r in rejected),
            "rejected_alone_truly_worse": sum(r.own_truth is not None and r.own_truth - r.champion_truth <= -0.01
                                              for r in rejected),
            "rejected_poisoned": sum(r.wrong_new > 0 or r.poisoned > 0 for r in rejected)}  # fmt: skip


def _data_check(rows: list[Round]) -> dict[str, Any]:
    """The admin's data check: rounds whose new samples held wrong labels (caught when it flagged), clean rounds
    (a flag is a false alarm), and how many of the samples it listed for review truly had a wrong label."""
    dirty = [r for r in rows if r.wrong_new]
    clean = [r for r in rows if not r.wrong_new]
    return {"rounds_with_wrong_labels": len(dirty), "caught": sum(bool(r.check_flagged) for r in dirty),
            "clean_rounds": len(clean), "false_alarms": sum(bool(r.check_flagged) for r in clean),
            "held": sum(r.held for r in rows), "listed": sum(r.check_suspects for r in rows),
            "listed_wrong": sum(r.check_true_suspects for r in rows),
            "wrong_new": sum(r.wrong_new for r in dirty)}  # fmt: skip


def _holdout(rows: list[Round]) -> dict[int, dict[str, float]]:
    """Per round: the range of the holdout's share of uploads over the loops, and of the fair holdout's size."""
    out: dict[int, dict[str, float]] = {}
    for rnd in sorted({r.round for r in rows}):
        mine = [r for r in rows if r.round == rnd]
        out[rnd] = {"uploads": max(r.uploaded for r in mine),
                    "share_min": min(r.holdout_share for r in mine), "share_max": max(r.holdout_share for r in mine),
                    "fair_n_min": min(r.new_n for r in mine), "fair_n_max": max(r.new_n for r in mine)}  # fmt: skip
    return out


def by_chance(rows: list[Round], points: float = 0.01) -> dict[str, Any]:
    """How many rounds would look truly worse (and truly better) by ``points`` or more if every candidate were
    exactly as good as its champion: each image of the truth set that only one of the two got right is then a
    coin flip, so a finite truth set alone makes some equal candidates look worse. Compare with the counts seen:
    fewer worse than this means the loop's losses are within what the truth set's own noise produces."""
    told = [r for r in rows if r.truth_p is not None]
    sizes = _truth_sizes(told)
    known = [r for r in told if r.domain in sizes]
    expected = 0.0
    for r in known:
        n, m = r.truth_cand_only + r.truth_champ_only, math.ceil(points * sizes[r.domain] - 1e-9)
        # champion-only wins c ~ Binomial(n, 1/2); "worse by m images or more" is c - (n - c) >= m
        expected += 1.0 - binom_cdf_half(math.ceil((n + m) / 2) - 1, n)
    return {"rounds": len(known), "truth_images": sizes, "expected_worse": round(expected, 2),
            "expected_better": round(expected, 2),  # the same by symmetry
            "seen_worse": sum(r.truth_diff <= -points for r in known),
            "seen_better": sum(r.truth_diff >= points for r in known)}  # fmt: skip


def _truth_sizes(rows: list[Round]) -> dict[str, int]:
    """Each domain's truth-set size: recorded in the rows, or (runs from before it was) read back from the row
    whose truth difference is the most images, where the difference's 4-decimal rounding matters least."""
    sizes: dict[str, int] = {}
    for domain in sorted({r.domain for r in rows}):
        mine = [r for r in rows if r.domain == domain]
        recorded = {r.truth_n for r in mine if r.truth_n}
        if recorded:
            sizes[domain] = max(recorded)
            continue
        best = max(mine, key=lambda r: abs(r.truth_cand_only - r.truth_champ_only))
        if best.truth_diff != 0:  # else no row tells the size: the domain is left out of by_chance
            sizes[domain] = round((best.truth_cand_only - best.truth_champ_only) / best.truth_diff)
    return sizes


def _mean_by_round(rows: list[Round], key: str) -> dict[int, float]:
    """The served model's mean truth accuracy over the loops after each round (0: the first model)."""
    by: dict[int, list[float]] = {0: [r.champion_truth for r in rows if r.round == 1]}
    for r in rows:
        by.setdefault(r.round, []).append(getattr(r, key))
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(by.items()) if v}


def _end_gap(rows: list[Round], key: str) -> float:
    """How far below the best candidate seen (in its own loop) the served model ended, the worst loop."""
    gaps = []
    for loop in {(r.domain, r.seed) for r in rows}:
        mine = sorted((r for r in rows if (r.domain, r.seed) == loop), key=lambda r: r.round)
        gaps.append(round(max(r.candidate_truth for r in mine) - getattr(mine[-1], key), 4))
    return max(gaps, default=0.0)


def markdown(rows: list[Round], summary: dict[str, dict[str, Any]]) -> str:
    out = ["| domain | seed | round | uploads | holdout share | champion truth | candidate truth | first rule "
           "| gate | fair n (left out) | diff [95% CI] | truth only cand/champ (p) | served truth (first rule) |",
           "|" + "---|" * 13]
    for r in rows:
        round_ = f"{r.round} ({r.poisoned} mislabelled)" if r.poisoned else str(r.round)
        out.append(
            f"| {r.domain} | {r.seed} | {round_} | {r.uploaded} | {r.holdout_share:.2f} | {r.champion_truth:.4f} | "
            f"{r.candidate_truth:.4f} | {'promote' if r.old_passed else 'reject'} ({r.old_n}) | "
            f"{_gate(r)} | {r.new_n} ({r.left_out}) | {100 * r.difference:+.1f} "
            f"[{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}] | {_truth_pairs(r)} | "
            f"{r.served_truth:.4f} ({r.old_served_truth:.4f}) |"
        )
    out.append("")
    for name, s in summary.items():
        out.append(f"**{name}**: `{json.dumps(s)}`")
        out.append("")
    return "\n".join(out)


def _gate(r: Round) -> str:
    """The gate's decision, and the data check's when it flagged (held: the gate passed, the check held it)."""
    word = "held" if r.held else "promote" if r.new_passed else "reject"
    return f"{word} (check: {r.check_flagged}, {r.check_suspects} listed)" if r.check_flagged else word


def _truth_pairs(r: Round) -> str:
    return "n/a" if r.truth_p is None else f"{r.truth_cand_only}/{r.truth_champ_only} ({r.truth_p:.2g})"


def main() -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False, formatter_class=fmt)
    p.add_argument("--domains", nargs="+", default=["fashion-mnist", "ants-bees"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="run seeds from this one (several processes in parallel)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--first", type=int, default=10, help="training (and as many validation) images per class first")
    p.add_argument("--per-round", type=int, default=20, help="Fashion-MNIST images per class each round")
    p.add_argument("--ab-per-round", type=int, default=20, help="ants/bees images per class each round")
    p.add_argument("--fm-truth", type=int, default=10_000, help="t10k images as Fashion-MNIST's truth")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--head-seeds", type=int, default=None, help="graft train's --head-seeds (default: its own)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a graft train setting for every training (e.g. patience=0); repeatable")
    p.add_argument("--warm-start", action="store_true", help="retrain from the champion's weights (warm_start)")
    p.add_argument("--poison-round", type=int, default=0, metavar="R",
                   help="in round R, upload --poison-count images of the first label under the second (0: off)")
    p.add_argument("--poison-count", type=int, default=20, metavar="N")
    p.add_argument("--label-check", choices=["hold", "note", "off"], default="hold",
                   help="the admin's data check before a candidate serves (GRAFT_LABEL_CHECK)")
    p.add_argument("--split", choices=["balanced", "hash"], default="balanced",
                   help="the intake's holdout split (GRAFT_HOLDOUT_SPLIT): balanced per label, or the hash alone")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--from-json", type=Path, nargs="+", metavar="JSON",
                   help="summarise the rounds of earlier runs (for example one per domain) instead of running")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("training").setLevel(logging.WARNING)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="loop_truth-"))
    rule = GateRule()
    rows: list[Round] = []
    started = time.perf_counter()
    for earlier in args.from_json or []:
        rows += [Round(**r) for r in json.loads(earlier.read_text())["rounds"]]
    for domain in [] if args.from_json else args.domains:
        if domain == "ants-bees" and not WEIGHTS.is_file():
            log.warning("%s not found: ants-bees left out", SHARED)
            continue
        if domain == "fashion-mnist" and not FASHION_MNIST_DIR.is_dir():
            log.warning("%s not found (apt-get install dataset-fashion-mnist): left out", FASHION_MNIST_DIR)
            continue
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            d = fashion(seed, args, work / "truth") if domain == "fashion-mnist" else ants_bees(seed, args)
            if args.head_seeds is not None:
                d.train["head_seeds"] = args.head_seeds
            d.train.update(dict(kv.split("=", 1) for kv in args.set))
            d.retrain["warm_start"] = args.warm_start
            d.label_check = args.label_check
            if args.poison_round:
                poison(d, args.poison_round, args.poison_count)
            rows += run_loop(d, seed, work / domain / f"seed{seed}", 0.2, rule, args.split == "balanced")
    summary = {d: summarise([r for r in rows if r.domain == d]) for d in sorted({r.domain for r in rows})}
    summary["all"] = summarise(rows)
    report = {"rule": asdict(rule), "args": {k: str(v) for k, v in vars(args).items()},
              "rounds": [asdict(r) for r in rows],
              "summary": summary, "wall_s": round(time.perf_counter() - started, 1),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # fmt: skip
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(rows, summary) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
