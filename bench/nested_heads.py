"""Does a head trained on more of the same data score at least as well on truth? Where retraining's ups and downs
come from (issue 20, part 4). Not a timed test.

Nested training sets (a per-class prefix of a shuffled pool, growing like the loop's rounds) are each learned by
several learners on the same frozen features (MobileNetV2 with the shared ImageNet weights, graft's evaluation
preprocessing), and every head is scored on a truth set none of them saw. A *step* is one set to the next, larger
one; a step *lost* when the larger set's head got at least 1 point fewer truth images right (2 of ants/bees' 153).

Learners (features are computed once; each head is a linear layer):

* ``lbfgs``: L2-regularised logistic regression solved to convergence by L-BFGS, class-balanced. No seed, no
  validation split, no early stopping: whatever this learner's steps lose comes from the data, not from training.
* ``adamw``: graft's head recipe in miniature: AdamW (lr 3e-3, weight decay 1e-4), a cosine schedule after half an
  epoch of warm-up, 15 epochs, batches of 32, dropout 0.2 on the features, a class-balanced loss, the best epoch
  on a 20% validation split chosen by a fixed per-image rank, 5 seeds averaged.
* ``adamw-all``: the same without a validation split: every image trains and all 15 epochs are kept.
* ``rounds-average``: ``adamw``, but each set's head is the average of its own and every smaller set's head (for
  linear heads on the same features, a logit ensemble across rounds).
* ``champion-average``: ``adamw-all``, each set's head averaged half and half with the previous set's served head
  (itself such an average): an exponential average across rounds, where ``rounds-average`` weighs every round
  alike. One linear head, so it serves at no extra cost.
* ``focal-distill``: ``adamw-all`` plus focal distillation from the previous set's head (the champion), as in
  positive-congruent training (Yan et al., CVPR 2021): on the training images the champion got right, the new head
  is also pulled towards the champion's softened outputs (KL at temperature 2, weight 1), so it keeps what the
  champion knew unless the labels say otherwise. The first set has no champion and trains as ``adamw-all``.

``lbfgs`` is the baseline every other row is compared with, in the same run. Each lost step is also tested on
truth itself (exact McNemar, two-sided, on the images only one of the two heads got right): how many of the losses
truth could call real at 5%.

    .venv/bin/python bench/nested_heads.py --orders 40 --json bench/results/nested_heads.json
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import math
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from admin.domain.paired import mcnemar_exact
from bench._models import SHARED, WEIGHTS
from bench._runs import machine
from graft.core.transforms import eval_transform
from graft.core.zoo import create_model, find_head
from training.data import class_weights
from training.distill import focal_distillation
from training.fashion_mnist import FASHION_MNIST_DIR, read_idx

log = logging.getLogger("bench.nested_heads")
Head = dict[str, torch.Tensor]
SEEDS, EPOCHS, BATCH, LR, WD, DROPOUT, VAL = 5, 15, 32, 3e-3, 1e-4, 0.2, 0.2
KD_WEIGHT = 1.0  # training.distill.TEMPERATURE is the temperature
LEARNERS = ("lbfgs", "adamw", "adamw-all", "rounds-average", "focal-distill", "champion-average")
CHAMPION_SHARE = 0.5  # champion-average: the previous served head's share of the new one


# ---------------------------------------------------------------------------------------------------- features
@functools.cache
def _backbone() -> tuple[torch.nn.Module, Callable[[Image.Image], torch.Tensor]]:
    """MobileNetV2 with the shared weights, its head replaced by the identity, and its evaluation transform: built
    once for every domain."""
    model, pre, _ = create_model("mobilenet_v2", 2, weights=str(WEIGHTS))
    name, _ = find_head(model)
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, torch.nn.Identity())
    return model.eval(), eval_transform(pre)


def _features(images: list[Image.Image]) -> torch.Tensor:
    model, tf = _backbone()
    with torch.no_grad():
        return torch.cat([model(torch.stack([tf(im.convert("RGB")) for im in images[i : i + 64]]))
                          for i in range(0, len(images), 64)])  # fmt: skip


def ants_bees() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    root = SHARED / "data" / "hymenoptera"
    out = []
    for split in ("train", "val"):
        files = [(p, k) for k, c in enumerate(("ants", "bees")) for p in sorted((root / split / c).iterdir())]
        out += [_features([Image.open(p) for p, _ in files]), torch.tensor([k for _, k in files])]
    return out[0], out[1], out[2], out[3]


def fashion(pool: int, truth: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    pixels, targets = (
        read_idx(FASHION_MNIST_DIR / f"train-{k}-idx{d}-ubyte.gz") for k, d in (("images", 3), ("labels", 1))
    )
    idx = np.random.default_rng(0).permutation(len(pixels))[:pool]
    t_pixels = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")[:truth]
    t_targets = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")[:truth]
    x = _features([Image.fromarray(pixels[i], mode="L") for i in idx])
    tx = _features([Image.fromarray(p, mode="L") for p in t_pixels])
    return x, torch.tensor(targets[idx].astype(np.int64)), tx, torch.tensor(t_targets.astype(np.int64))


# ---------------------------------------------------------------------------------------------------- learners
def lbfgs(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float = 1e-2) -> Head:
    w = torch.zeros(classes, x.shape[1], requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20,
                            line_search_fn="strong_wolfe")  # fmt: skip
    cw = class_weights(y.tolist(), classes)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, y, weight=cw) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return {"weight": w.detach(), "bias": b.detach()}


def _adamw_one(
    x: torch.Tensor,
    y: torch.Tensor,
    classes: int,
    seed: int,
    val: tuple[torch.Tensor, torch.Tensor] | None,
    teacher: torch.Tensor | None = None,
) -> Head:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.AdamW(head.parameters(), lr=LR, weight_decay=WD)
    per_epoch = math.ceil(len(x) / BATCH)
    warm, total = per_epoch // 2, EPOCHS * per_epoch

    def factor(step: int) -> float:  # linear warm-up, then cosine to zero
        if step < warm:
            return (step + 1) / max(1, warm)
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    cw, best, best_key = class_weights(y.tolist(), classes), None, (-1.0, 0.0)
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(x), generator=gen).split(BATCH):
            out = head(torch.nn.functional.dropout(x[idx], DROPOUT))
            loss = torch.nn.functional.cross_entropy(out, y[idx], weight=cw)
            if teacher is not None:
                loss = loss + focal_distillation(out, teacher[idx], y[idx], KD_WEIGHT)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if val is not None:
            with torch.no_grad():
                out = head(val[0])
                key = (
                    (out.argmax(1) == val[1]).float().mean().item(),
                    -torch.nn.functional.cross_entropy(out, val[1]).item(),
                )
            if key > best_key:
                best, best_key = {k: v.detach().clone() for k, v in head.state_dict().items()}, key
    return best if best is not None else {k: v.detach().clone() for k, v in head.state_dict().items()}


def _val_split(idx: torch.Tensor, y: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """True for the validation images: per class, the VAL share with the lowest fixed rank (stable as sets grow)."""
    mask = torch.zeros(len(idx), dtype=torch.bool)
    for c in y[idx].unique():
        pos = (y[idx] == c).nonzero().flatten()
        pos = pos[rank[idx[pos]].argsort()]
        mask[pos[: max(1, round(VAL * len(pos)))]] = True
    return mask


def adamw(
    x: torch.Tensor, y: torch.Tensor, classes: int, split: torch.Tensor | None, champion: Head | None = None
) -> Head:
    if split is None:
        teacher = None if champion is None else (x @ champion["weight"].T + champion["bias"]).detach()
        heads = [_adamw_one(x, y, classes, s, None, teacher) for s in range(SEEDS)]
    else:
        heads = [_adamw_one(x[~split], y[~split], classes, s, (x[split], y[split])) for s in range(SEEDS)]
    return average(heads)


def average(heads: list[Head]) -> Head:
    return {k: torch.stack([h[k] for h in heads]).mean(0) for k in heads[0]}


def correct(head: Head, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (x @ head["weight"].T + head["bias"]).argmax(1) == y


# ---------------------------------------------------------------------------------------------------- the study
def _chain_distill(x: torch.Tensor, y: torch.Tensor, classes: int, sets: list[torch.Tensor]) -> list[Head]:
    heads: list[Head] = []
    for i in sets:
        heads.append(adamw(x[i], y[i], classes, None, heads[-1] if heads else None))
    return heads


def _fit(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    classes: int,
    sets: list[torch.Tensor],
    rank: torch.Tensor,
    fitted: dict[str, list[Head]],
) -> list[Head]:
    """One learner's heads for every set of a chain (the averages reuse the heads they average when those ran)."""
    if name == "lbfgs":
        return [lbfgs(x[i], y[i], classes) for i in sets]
    if name == "adamw":
        return [adamw(x[i], y[i], classes, _val_split(i, y, rank)) for i in sets]
    if name == "adamw-all":
        return [adamw(x[i], y[i], classes, None) for i in sets]
    if name == "rounds-average":
        base = fitted.get("adamw") or _fit("adamw", x, y, classes, sets, rank, fitted)
        return [average(base[: k + 1]) for k in range(len(sets))]
    if name == "champion-average":
        own = fitted.get("adamw-all") or _fit("adamw-all", x, y, classes, sets, rank, fitted)
        served = [own[0]]
        for head in own[1:]:
            served.append({k: (1 - CHAMPION_SHARE) * head[k] + CHAMPION_SHARE * served[-1][k] for k in head})
        return served
    return _chain_distill(x, y, classes, sets)


def run(data: tuple[torch.Tensor, ...], sizes: list[int], orders: int, learners: list[str]) -> dict[str, Any]:
    x, y, tx, ty = data
    classes = int(y.max()) + 1
    rank = torch.from_numpy(np.random.default_rng(1234).random(len(x)))
    right: dict[str, list[list[torch.Tensor]]] = {k: [] for k in learners}
    for order in range(orders):
        rng = np.random.default_rng(100 + order)
        perm = [torch.from_numpy(rng.permutation((y == c).nonzero().flatten().numpy())) for c in range(classes)]
        sets = [torch.cat([p[:n] for p in perm]) for n in sizes]
        fitted: dict[str, list[Head]] = {}
        for name in learners:
            fitted[name] = _fit(name, x, y, classes, sets, rank, fitted)
        for name in learners:
            right[name].append([correct(h, tx, ty) for h in fitted[name]])
        log.info("order %d of %d done", order + 1, orders)
    return {name: _summary(rows, len(ty)) for name, rows in right.items()}


def _summary(rows: list[list[torch.Tensor]], truth: int) -> dict[str, Any]:
    point = math.ceil(truth / 100)
    counts = np.array([[int(r.sum()) for r in row] for row in rows])
    steps = lost = lost_significant = gained = 0
    for row in rows:
        for small, big in itertools.pairwise(row):
            steps += 1
            diff = int(big.sum()) - int(small.sum())
            lost += diff <= -point
            gained += diff >= point
            if diff <= -point:
                b, c = int((big & ~small).sum()), int((small & ~big).sum())
                lost_significant += mcnemar_exact(b, c)[0] < 0.05
    return {
        "truth_images": truth,
        "one_point_images": point,
        "mean_correct_by_size": [round(float(v), 1) for v in counts.mean(0)],
        "mean_accuracy_by_size": [round(float(v) / truth, 4) for v in counts.mean(0)],
        "steps": steps,
        "lost_1_point": int(lost),
        "lost_share": round(lost / steps, 3),
        "lost_significant_on_truth": int(lost_significant),
        "gained_1_point": int(gained),
        "end_gap_points": round(float((counts.max(1) - counts[:, -1]).mean()) * 100 / truth, 2),
    }


def markdown(results: dict[str, Any]) -> str:
    lines = []
    for domain, res in results.items():
        lines += [
            f"**{domain}** ({res['orders']} orders, sizes per class {res['sizes']}, truth {res['truth_images']} "
            f"images; 1 point = {res['one_point_images']} images)",
            "",
            "| learner | mean truth accuracy, smallest -> largest set | steps that lost >= 1 point "
            "| of them significant on truth | steps that gained >= 1 point | end gap to the best head (points) |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for name, s in res["learners"].items():
            acc = " -> ".join(f"{a:.4f}" for a in s["mean_accuracy_by_size"])
            lines.append(
                f"| {name} | {acc} | {s['lost_1_point']} of {s['steps']} ({s['lost_share']:.1%}) | "
                f"{s['lost_significant_on_truth']} | {s['gained_1_point']} | {s['end_gap_points']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--domains", default="ants-bees,fashion-mnist")
    ap.add_argument("--orders", type=int, default=40, help="shuffled orders of the pool (each makes one nested chain)")
    ap.add_argument("--fm-orders", type=int, default=None, help="orders for Fashion-MNIST (default: --orders)")
    ap.add_argument("--fm-truth", type=int, default=2000)
    ap.add_argument("--learners", default=",".join(LEARNERS), help=f"comma-separated, of {', '.join(LEARNERS)}")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(2)
    if not WEIGHTS.is_file():
        raise SystemExit(f"{WEIGHTS} not found: this study needs ../shared")
    domains: dict[str, tuple[Callable[[], tuple[torch.Tensor, ...]], list[int], int]] = {
        # ants/bees: 10 more photos per class and round, from 20; Fashion-MNIST: the loop's 16 training images per
        # class and round (20 uploads, 80% of them to training), from 10
        "ants-bees": (ants_bees, [20, 40, 60, 80, 100], args.orders),
        "fashion-mnist": (lambda: fashion(2000, args.fm_truth), [10, 26, 42, 58, 74], args.fm_orders or args.orders),
    }
    chosen = args.learners.split(",")
    if unknown := set(chosen) - set(LEARNERS):
        ap.error(f"unknown learners {sorted(unknown)}: choose from {', '.join(LEARNERS)}")
    t0, results = time.perf_counter(), {}
    for name in args.domains.split(","):
        make, sizes, orders = domains[name]
        started = time.perf_counter()
        data = make()
        learners = run(data, sizes, orders, chosen)
        results[name] = {"orders": orders, "sizes": sizes, "truth_images": len(data[3]),
                         "one_point_images": next(iter(learners.values()))["one_point_images"],
                         "learners": learners, "wall_s": round(time.perf_counter() - started, 1)}  # fmt: skip
    report = {"results": results, "wall_s": round(time.perf_counter() - t0, 1), "machine": machine(),
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # fmt: skip
    text = markdown(results)
    log.info("\n%s\nwall %.0f s, peak RSS %.0f MB", text, report["wall_s"], report["peak_rss_mb"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
