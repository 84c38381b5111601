"""Active learning on Fashion-MNIST through the real loop: labels chosen by the review queue vs at random.

Data: Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``; ``make setup``
installs it). A first model (MobileNetV2 head on ``--seed-per-class`` images per class) is served by
``graft serve RUN --capture-rate 1``. Then, for each arm (``margin``: the review queue's order; ``random``:
the queue's random order), in rounds: the unlabelled pool is streamed through the real inference endpoint
(capture keeps every answer), ``--budget`` items are taken from ``GET /v1/review`` and labelled through
``POST /v1/review/{id}/label`` with their true class, and ``POST /v1/retrain`` trains, gates, replays and
promotes. Each round's model is scored on a fixed test set from t10k (in-process, the run folder the job
wrote). The gate tolerance is 1.0 here so that every round's model serves: this measures what the labels
teach, not the gate.

Also the capture's cost: inference throughput at concurrency 32 with capture off, on (rate 1; the admin
indexing nothing meanwhile: the handler's share) and on with the admin indexing as it goes, on the same
model and machine, alternated, with the servers' peak RSS.

    .venv/bin/python bench/active_learning.py --json bench/results/active_learning.json \\
        --markdown bench/results/active_learning.md --plot bench/results/active_learning.png
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)] if str(REPO) not in sys.path else []

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench._service import ADMIN_TOKEN, SAMPLER, Service, run_job, serving  # noqa: E402
from bench.load import load  # noqa: E402
from training.fashion_mnist import FASHION_MNIST_DIR as FASHION  # noqa: E402
from training.fashion_mnist import FASHION_MNIST_LABELS, read_idx  # noqa: E402

log = logging.getLogger("bench.active_learning")
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2_imagenet.pth"
CLASSES = list(FASHION_MNIST_LABELS)
NAME = "fashion"


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, "PNG")
    return buf.getvalue()


def prepare(work: Path, args: argparse.Namespace) -> tuple[Path, dict[str, str], list[tuple[Path, str]]]:
    """Base data (train: seed set, val: the admin's holdout), the pool (sha256 -> true label), the test set."""
    if not FASHION.is_dir():
        raise SystemExit(f"{FASHION} not found: apt-get install dataset-fashion-mnist (make setup does)")
    x, y = read_idx(FASHION / "train-images-idx3-ubyte.gz"), read_idx(FASHION / "train-labels-idx1-ubyte.gz")
    tx, ty = read_idx(FASHION / "t10k-images-idx3-ubyte.gz"), read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    order = np.random.default_rng(0).permutation(len(x))
    base, used = work / "data", set()
    for split, per_class in (("train", args.seed_per_class), ("val", args.holdout_per_class)):
        for c, name in enumerate(CLASSES):
            picks = [int(i) for i in order if y[i] == c and int(i) not in used][:per_class]
            used.update(picks)
            (base / split / name).mkdir(parents=True, exist_ok=True)
            for i in picks:
                (base / split / name / f"{i}.png").write_bytes(png(x[i]))
    pool: dict[str, str] = {}
    (work / "pool").mkdir(exist_ok=True)
    for i in (int(i) for i in order if int(i) not in used):
        if len(pool) >= args.pool:
            break
        data = png(x[i])
        pool.setdefault(hashlib.sha256(data).hexdigest(), CLASSES[int(y[i])])
        (work / "pool" / f"{i}.png").write_bytes(data)
    test = []
    (work / "test").mkdir(exist_ok=True)
    for i in range(args.test):
        path = work / "test" / f"{i}-{CLASSES[int(ty[i])]}.png"
        path.write_bytes(png(tx[i]))
        test.append((path, CLASSES[int(ty[i])]))
    return base, pool, test


def first_model(work: Path, base: Path, epochs: int) -> Path:
    run = work / "runs" / NAME
    subprocess.run([sys.executable, "-m", "graft.cli", "train", "--data", str(base), "--output", str(run),
                    "--backbone", "mobilenet_v2", "--weights", str(WEIGHTS), "--trainable-stages", "0",
                    "--epochs", str(epochs)], check=True, cwd=REPO, capture_output=True)  # fmt: skip
    return run


def accuracy(run_dir: Path, test: list[tuple[Path, str]]) -> float:
    from training.evaluate import evaluate_run

    return round(float(evaluate_run(run_dir, test)["accuracy"]), 4)


def stream(svc: Service, files: list[Path], concurrency: int = 8) -> int:
    """Each file once through the inference endpoint; how many answered 200."""
    import httpx

    headers = {**svc.ts.headers(), "Content-Type": "image/png"}
    with httpx.Client(timeout=120) as c, ThreadPoolExecutor(concurrency) as pool:
        codes = list(pool.map(lambda f: c.post(svc.predict_url, content=f.read_bytes(), headers=headers).status_code,
                              files))  # fmt: skip
    return sum(code == 200 for code in codes)


def wait_indexed(svc: Service, at_least: int, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stats: dict[str, Any] = svc.admin.get("/v1/review/stats", headers=SAMPLER).json()
        if stats["captured"] >= at_least or time.monotonic() > deadline:
            return stats
        time.sleep(1)


def label_round(svc: Service, strategy: str, budget: int, truth: dict[str, str]) -> list[dict[str, Any]]:
    """Take ``budget`` items from the queue in ``strategy`` order and label each with its true class."""
    items = svc.admin.get("/v1/review", params={"strategy": strategy, "limit": budget}, headers=SAMPLER).json()["items"]
    done = []
    for item in items:
        image = svc.admin.get(item["image_url"], headers=SAMPLER).content
        label = truth[hashlib.sha256(image).hexdigest()]
        r = svc.admin.post(f"/v1/review/{item['id']}/label", json={"label": label}, headers=SAMPLER)
        r.raise_for_status()
        done.append({"margin": item["margin"], "predicted": item["predicted"], "label": label})
    return done


def arm(work: Path, run: Path, strategy: str, pool: dict[str, str], test: list[tuple[Path, str]],
        args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """One strategy from the same first model: accuracy on the test set after each round."""
    env = {"GRAFT_GATE_POLICY": "accuracy",
           "GRAFT_GATE_TOLERANCE": "1.0", "GRAFT_HOLDOUT_FRACTION": "0.05", "GRAFT_CAPTURE_SCAN_S": "1",
           "GRAFT_TRAIN_ARGS": json.dumps({"epochs": args.epochs})}  # fmt: skip
    curve = [{"round": 0, "labels": 0, "accuracy": accuracy(run, test), "version": "1"}]
    log.info("%s: round 0: %.4f", strategy, curve[0]["accuracy"])
    files = sorted((work.parent / "pool").glob("*.png"))
    with serving(work, run, NAME, args=["--capture-rate", "1"], env=env) as svc:
        labelled = 0
        for r in range(1, args.rounds + 1):
            t0, before = time.monotonic(), captured(svc)
            stats = wait_indexed(svc, before + stream(svc, files))
            picked = label_round(svc, strategy, args.budget, pool)
            labelled += len(picked)
            job = run_job(svc)
            run_dir = Path(str((job.get("config") or {}).get("output", "")))  # type: ignore[union-attr]
            acc = accuracy(run_dir, test) if (run_dir / "model.json").is_file() else None
            curve.append({"round": r, "labels": labelled, "accuracy": acc, "version": job["candidate_version"],
                          "job": job["status"], "queued": stats["queued"], "replay_agreement":
                          (job.get("replay") or {}).get("agreement"),  # type: ignore[union-attr]
                          "mean_margin_labelled": round(statistics.fmean(p["margin"] for p in picked), 4),
                          "seconds": round(time.monotonic() - t0, 1)})  # fmt: skip
            log.info("%s: round %d: %d labels, accuracy %s (%s)", strategy, r, labelled, acc, job["status"])
        peak = svc.peak_rss_mb()
    return {"strategy": strategy, "curve": curve, "peak_rss_mb": peak}


def captured(svc: Service) -> int:
    return int(svc.admin.get("/v1/review/stats", headers=SAMPLER).json()["captured"])


# The capture's cost, three ways: "on" is the handler's share (the admin indexes nothing while the load
# runs), "on+index" adds the admin's indexing of what arrives (decoding and hashing each capture), which
# shares these two cores with the workers.
COST_SETTINGS: dict[str, tuple[list[str], dict[str, str]]] = {
    "off": ([], {}),
    "on": (["--capture-rate", "1"], {"GRAFT_CAPTURE_SCAN_S": "3600"}),
    "on+index": (["--capture-rate", "1"], {}),
}


def warm_up(svc: Service, headers: dict[str, str], bodies: list[bytes]) -> None:
    """A few predictions, then the drift report: the admin computes the model's drift reference (its holdout
    through the model, a few CPU-seconds once per version) here, not inside the measured window."""
    import httpx

    for body in bodies[:10]:
        httpx.post(svc.predict_url, content=body, headers=headers, timeout=120).raise_for_status()
    svc.admin.get("/v1/drift", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).raise_for_status()


def capture_cost(work: Path, run: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Throughput at concurrency 32 for each of COST_SETTINGS, alternated; peak RSS of each server."""
    bodies = [p.read_bytes() for p in sorted((work / "pool").glob("*.png"))[:200]]
    runs: dict[str, list[float]] = {name: [] for name in COST_SETTINGS}
    rss: dict[str, dict[str, float]] = {}
    for i in range(args.cost_repeats):
        for setting, (extra, env) in COST_SETTINGS.items():
            with serving(work / f"cost-{setting}-{i}", run, NAME, args=extra, env=env) as svc:
                headers = {**svc.ts.headers(), "Content-Type": "image/png"}
                warm_up(svc, headers, bodies)
                result = load(svc.predict_url, headers, bodies, 32, 5, args.cost_seconds)
                runs[setting].append(round(result["img_s"], 1))
                rss[f"{setting} #{i + 1}"] = svc.peak_rss_mb()
                log.info("capture %s: %.1f img/s (p50 %.1f ms)", setting, result["img_s"], result["p50_ms"])
    medians = {name: round(statistics.median(v), 1) for name, v in runs.items()}
    change = {name: round(medians[name] / medians["off"] - 1, 4) for name in COST_SETTINGS if name != "off"}
    return {"img_s": runs, "median": medians, "change": change, "peak_rss_mb": rss}


def labels_to_reach(curve: list[dict[str, Any]], target: float) -> int | None:
    return next((p["labels"] for p in curve if p["accuracy"] is not None and p["accuracy"] >= target), None)


def markdown(result: dict[str, Any]) -> str:
    arms = {a["strategy"]: a["curve"] for a in result["arms"]}
    lines = [f"Machine: {result['machine']}. {result['setup']}", ""]
    if arms:
        lines += curves(arms, result["targets"])
    cost = result["capture_cost"]
    lines += ["", "| capture at concurrency 32 | img/s (each run) | median | vs off |", "|---|---|---:|---:|"]
    for name, runs in cost["img_s"].items():
        change = f"{100 * cost['change'][name]:+.1f}%" if name in cost["change"] else ""
        lines.append(f"| {name} | {', '.join(map(str, runs))} | {cost['median'][name]} | {change} |")
    return "\n".join(lines) + "\n"


def curves(arms: dict[str, list[dict[str, Any]]], targets: list[float]) -> list[str]:
    lines = ["| labels | " + " | ".join(f"{s} accuracy" for s in arms) + " |", "|---:|" + "---:|" * len(arms)]
    for i in range(len(next(iter(arms.values())))):
        row = [str(next(iter(arms.values()))[i]["labels"])]
        row += [str(curve[i]["accuracy"]) if i < len(curve) else "" for curve in arms.values()]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| labels needed to reach | " + " | ".join(arms) + " |", "|---|" + "---:|" * len(arms)]
    for target in targets:
        lines.append(f"| {target:.2f} | " + " | ".join(str(labels_to_reach(c, target) or "not reached")
                                                       for c in arms.values()) + " |")  # fmt: skip
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for a in result["arms"]:
        pts = [(p["labels"], p["accuracy"]) for p in a["curve"] if p["accuracy"] is not None]
        ax.plot(*zip(*pts, strict=True), marker="o", label=f"{a['strategy']} (review queue)")
    ax.set_xlabel("labels added through the review queue")
    ax.set_ylabel("test accuracy (Fashion-MNIST t10k subset)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed-per-class", type=int, default=5)
    p.add_argument("--holdout-per-class", type=int, default=20)
    p.add_argument("--pool", type=int, default=1000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--budget", type=int, default=50)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--cost-seconds", type=float, default=20)
    p.add_argument("--cost-repeats", type=int, default=2)
    p.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.75])
    p.add_argument("--cost-only", action="store_true", help="measure the capture's cost only (no rounds)")
    p.add_argument("--work", type=Path, help="keep the work folder here (default: a temporary one)")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--plot", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    with tempfile.TemporaryDirectory(prefix="graft-al-") as tmp:
        work = args.work or Path(tmp)
        t0 = time.monotonic()
        base, pool, test = prepare(work, args)
        run = first_model(work, base, args.epochs)
        cost = capture_cost(work, run, args)
        strategies = () if args.cost_only else ("margin", "random")
        arms = [arm(work / strategy, run, strategy, pool, test, args) for strategy in strategies]
    result = {
        "machine": f"{platform.node()}: {platform.processor() or platform.machine()}, "
                   f"{len(__import__('os').sched_getaffinity(0))} cores, no GPU",
        "setup": (f"MobileNetV2 (ImageNet) head only; first model on {args.seed_per_class} images per class; "
                  f"pool {len(pool)}; {args.budget} labels per round; test set {len(test)} images from t10k."),
        "targets": args.targets, "arms": arms, "capture_cost": cost, "seconds": round(time.monotonic() - t0),
    }  # fmt: skip
    text = markdown(result)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.markdown:
        args.markdown.write_text(text)
    if args.plot and arms:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
