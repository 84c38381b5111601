"""Score the models of an earlier ``bench/loop_truth.py`` run on a larger truth set, and judge its decisions again.

A loop's decisions do not depend on its truth set (the gate never sees it), so the same champions and candidates,
kept in the run's folders (``WORKDIR/fashion-mnist/seed<N>/v<round>``), can be scored afterwards on more truth
images than the run used, without training anything again. This rescoring keeps every recorded decision and
replaces the truth figures (each model's accuracy, the served model's, the paired counts and truth's own McNemar
p-value) with those on the first ``--fm-truth`` t10k images, then summarises as the loop does. As a check, each
model's accuracy on the run's own truth images (the first ``args.fm_truth`` of the recorded run) must equal the
recorded one.

Fast because the models share their frozen stages: the loop's recipes train the head, sometimes the last stage
too, on the same ImageNet backbone. The stages whose weights (and batch-norm statistics) are identical in every
model are run once per truth image (``training.forward_cut.ForwardPrefix``); each model runs only the rest from
that output (``ForwardSuffix``). Each model's answers on the first ``--spot-check`` images are also computed with
its whole forward (``admin.domain.judge.default_evaluate``, as the loop scored them) and must be the same.

    .venv/bin/python bench/loop_truth_rescore.py --json bench/results/loop_truth_fm.json \\
        --runs /tmp/lt3/work /tmp/lt4/work --fm-truth 10000 --truth-dir /tmp/fm-truth \\
        --out-json bench/results/loop_truth_fm_10k.json --out-markdown bench/results/loop_truth_fm_10k.md

Not a timed test. Fashion-MNIST only: ants/bees' truth (its 153 validation photos) has nothing more to add.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
from torch.utils.data import DataLoader

from admin.domain.judge import default_evaluate
from admin.domain.paired import mcnemar_exact
from bench._loop_sim import Round
from bench.loop_truth import _fm_truth, markdown, summarise
from graft.core.artifact import load_model, read_card
from graft.core.transforms import eval_transform
from training.data import ImageDataset, collate
from training.forward_cut import ForwardPrefix, ForwardSuffix, eval_mode

log = logging.getLogger("bench.loop_truth_rescore")


def _run_dir(runs: list[Path], seed: int, version: int) -> Path:
    for root in runs:
        run = root / "fashion-mnist" / f"seed{seed}" / f"v{version}"
        if (run / "model.json").is_file():
            return run
    raise SystemExit(f"seed {seed} v{version}: no run folder under {', '.join(map(str, runs))}")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], stage: str) -> bool:
    keys = [k for k in a if k.startswith(stage + ".")]
    return bool(keys) and all(k in b and torch.equal(a[k], b[k]) for k in keys)


def shared_stages(runs: list[Path]) -> list[str]:
    """The leading stages whose weights and buffers are the same in every model (and the same preprocessing)."""
    cards = [read_card(r) for r in runs]
    if any(c.preprocessing != cards[0].preprocessing or c.recipe.get("stages") != cards[0].recipe.get("stages")
           for c in cards):  # fmt: skip
        return []
    states = [load_model(r, "cpu")[0].state_dict() for r in runs]
    shared: list[str] = []
    for stage in cards[0].recipe.get("stages") or []:
        if stage == "head" or not all(_same(states[0], st, stage) for st in states[1:]):
            break
        shared.append(stage)
    return shared


@torch.no_grad()
def predict_all(runs: list[Path], truth: list[tuple[Path, str]], batch: int = 64) -> dict[Path, list[str | None]]:
    """Every model's top-1 label on every truth image, the shared stages run once per image."""
    stages = shared_stages(runs)
    if not stages:  # nothing shared: each model's whole forward
        log.info("no stage shared by every model: each runs its whole forward")
        return {r: default_evaluate(r, truth, "cpu")[0] for r in runs}
    boundary = stages[-1]
    ref, card = load_model(runs[0], "cpu")
    data = ImageDataset([(p, i) for i, (p, _) in enumerate(truth)], eval_transform(card.preprocessing),
                        card.preprocessing.background)  # fmt: skip
    t0, feats = time.perf_counter(), []
    with eval_mode(ref):
        prefix = ForwardPrefix(ref, boundary)
        for k, (x, _) in enumerate(DataLoader(data, batch_size=batch, collate_fn=collate)):
            feats.append(prefix(x))
            if k % 20 == 0:
                log.info("shared stages through %s: %d of %d images", boundary, (k + 1) * batch, len(truth))
    log.info("shared stages: %d images in %.0f s", len(truth), time.perf_counter() - t0)
    out: dict[Path, list[str | None]] = {}
    for run in runs:
        model, mc = load_model(run, "cpu")
        suffix = ForwardSuffix(model, stages[:-1], boundary)
        with eval_mode(model):
            preds = [int(i) for f in feats for i in suffix(f).argmax(1)]
        out[run] = [mc.labels[i] for i in preds]
    log.info("every model from the shared features: %.0f s in all", time.perf_counter() - t0)
    return out


def spot_check(runs: list[Path], truth: list[tuple[Path, str]], preds: dict[Path, list[str | None]],
               n: int) -> list[str]:  # fmt: skip
    """The whole forward, as the loop scored, on the first ``n`` images: must give the same answers."""
    problems: list[str] = []
    for run in runs if n > 0 else []:
        whole = default_evaluate(run, truth[:n], "cpu")[0]
        differ = sum(a != b for a, b in zip(whole, preds[run][:n], strict=True))
        if differ:
            problems.append(f"{run}: {differ} of {n} answers differ from the whole forward's")
    return problems


def _acc(right: list[bool]) -> float:
    return round(sum(right) / len(right), 4)


def rescore(rows: list[Round], runs: list[Path], truth: list[tuple[Path, str]], recorded_n: int,
            spot: int) -> tuple[list[Round], list[str]]:  # fmt: skip
    """The rows with their truth fields on ``truth``; the checks that failed (none when all is as recorded)."""
    seeds = sorted({r.seed for r in rows})
    versions = {s: max(r.round for r in rows if r.seed == s) for s in seeds}
    folder = {(s, v): _run_dir(runs, s, v) for s in seeds for v in range(versions[s] + 1)}
    preds = predict_all(list(folder.values()), truth)
    problems = spot_check(list(folder.values()), truth, preds, spot)
    out: list[Round] = []
    for seed in seeds:
        mine = sorted((r for r in rows if r.seed == seed), key=lambda r: r.round)
        right = {v: [p == label for p, (_, label) in zip(preds[folder[seed, v]], truth, strict=True)]
                 for v in range(len(mine) + 1)}
        for v, rr in right.items():  # the run's own truth: the first recorded_n images
            want = mine[0].champion_truth if v == 0 else mine[v - 1].candidate_truth
            if _acc(rr[:recorded_n]) != round(want, 4):
                problems.append(f"seed {seed} v{v}: {_acc(rr[:recorded_n])} on the run's truth, recorded {want}")
        served, old_served = 0, 0
        for r in mine:
            champion = served
            served = r.round if r.new_passed else served
            # The first rule's own chain is not recorded by version; its served model is the one whose recorded
            # truth equals the row's (the candidate of this round, or the one before).
            if r.old_served_truth == r.candidate_truth and r.old_served_truth != _acc(right[old_served][:recorded_n]):
                old_served = r.round
            elif r.old_served_truth == r.candidate_truth:
                problems.append(f"seed {seed} round {r.round}: the first rule's served model is ambiguous")
            if _acc(right[served][:recorded_n]) != round(r.served_truth, 4):
                problems.append(f"seed {seed} round {r.round}: served v{served} does not match the recorded truth")
            cand, champ = right[r.round], right[champion]
            b = sum(x and not y for x, y in zip(cand, champ, strict=True))
            c = sum(y and not x for x, y in zip(cand, champ, strict=True))
            row = Round(**asdict(r))
            row.champion_truth, row.candidate_truth = _acc(champ), _acc(cand)
            row.truth_diff = round(row.candidate_truth - row.champion_truth, 4)
            row.served_truth, row.old_served_truth = _acc(right[served]), _acc(right[old_served])
            row.truth_cand_only, row.truth_champ_only, row.truth_p = b, c, round(mcnemar_exact(b, c)[0], 6)
            out.append(row)
    return out, problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--json", type=Path, required=True, help="the earlier run's JSON (bench/loop_truth.py --json)")
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="its work folders (--workdir)")
    ap.add_argument("--fm-truth", type=int, default=10_000)
    ap.add_argument("--truth-dir", type=Path, required=True, help="where the truth images are written as PNG")
    ap.add_argument("--spot-check", type=int, default=200, help="images also predicted by each whole model")
    ap.add_argument("--recorded-truth", type=int, default=None,
                    help="truth images the run scored (default: its --fm-truth; a --from-json merge records 10,000)")
    ap.add_argument("--out-json", type=Path)
    ap.add_argument("--out-markdown", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    earlier = json.loads(args.json.read_text())
    rows = [Round(**r) for r in earlier["rounds"] if r["domain"] == "fashion-mnist"]
    recorded_n = args.recorded_truth or int(earlier["args"]["fm_truth"])
    if any(r.champion_truth != round(r.champion_truth, 4) for r in rows):
        raise SystemExit("unexpected: recorded truth with more than 4 decimals")
    started = time.perf_counter()
    truth = _fm_truth(args.truth_dir, args.fm_truth)
    rescored, problems = rescore(rows, args.runs, truth, min(recorded_n, args.fm_truth), args.spot_check)
    for p in problems:
        log.error("check failed: %s", p)
    summary: dict[str, Any] = {"fashion-mnist": summarise(rescored)}
    report = {"rescored_from": str(args.json), "truth_images": len(truth), "recorded_truth_images": recorded_n,
              "checks_failed": problems, "rounds": [asdict(r) for r in rescored], "summary": summary,
              "wall_s": round(time.perf_counter() - started, 1),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # fmt: skip
    print(json.dumps(summary, indent=2))
    if args.out_json:
        args.out_json.write_text(json.dumps(report, indent=2) + "\n")
    if args.out_markdown:
        args.out_markdown.write_text(markdown(rescored, summary) + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
