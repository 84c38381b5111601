"""Cost as the data grows, through the real admin API (issue 25): not a timed test.

The admin runs in its own process (a real uvicorn server, built as the API tests build it: a toy champion, no
TorchServe), so its CPU time is read from ``/proc/<pid>/stat`` alone. The client uploads distinct Fashion-MNIST
images (Debian's ``dataset-fashion-mnist``) in batches of 64 until the store holds each level, and measures a
window of uploads there: images/s, admin CPU ms per image, ``GET /v1/samples/stats`` latency, holdout share, admin
RSS and database bytes per sample. ``--baseline-tree DIR`` runs the admin from another checkout (e.g. a worktree
of main) for the before/after comparison in the same run. Past Fashion-MNIST's 70,000 pictures the client sends
altered copies: each train picture turned upside down (a different picture to the intake; a garment is rarely
symmetric top to bottom), for the 100,000 level.

``--job`` also runs a retraining job at each level and times its phases by polling ``GET /v1/jobs/{id}``: the
admin's own work on the whole store (snapshot and its digest, the gate's statistics, promotion) with the test
suite's stand-in trainer and stand-in predictions, so the models' forward passes are not in these times.

``--train-sizes`` also runs ``graft train`` (head recipe, mobilenet_v2, 1 epoch) on that many images and reports
its peak RSS (``/usr/bin/time``), for the feature-cache pass's memory.

    PYTHONPATH=$PWD .venv/bin/python -m bench.scale --levels 1000,10000 --out bench/results/scale.json
    PYTHONPATH=$PWD .venv/bin/python -m bench.scale --levels '' --train-sizes 500,4000 \\
        --out bench/results/scale_train.json
    PYTHONPATH=$PWD .venv/bin/python -m bench.scale --levels 1000,10000 --baseline-tree . \\
        --baseline-env GRAFT_HOLDOUT_SPLIT=hash --out bench/results/scale_split.json
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from graft.core.util import stop_child

REPO = Path(__file__).resolve().parents[1]
BATCH = 64
TOKEN = "scale-bench-admin-token-" + "a" * 24
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2_imagenet.pth"
log = logging.getLogger("bench.scale")


def serve_admin(state: Path, port: int) -> None:
    """The child: the admin as the API tests start it (tests/admin/test_api.py, test_jobs.py), until SIGTERM."""
    from admin.runners.local import LocalJobRunner
    from admin.server import AdminServer
    from admin.settings import AdminSettings
    from tests.support.fakes import FAKE_TRAINER, FakeRollout, fake_evaluate, placeholder_export, write_toy_card
    from training.fashion_mnist import FASHION_MNIST_LABELS

    initial = state.parent / "initial"  # a stand-in champion that knows the labels: its jobs go to the end
    write_toy_card(initial, list(FASHION_MNIST_LABELS), 0.8)
    settings = AdminSettings(admin_token=TOKEN, samples_token="scale-bench-samples-token-" + "s" * 24,
                             state_dir=state, model_store=state.parent / "store", model_name="graft",
                             initial_run=initial, rollout="none", admin_port=port, auto_retrain_after=0,
                             promote_new_labels=True, job_poll_s=0.1)  # fmt: skip
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    extra = {"evaluate": fake_evaluate, "export": placeholder_export}
    runner = LocalJobRunner(command=FAKE_TRAINER, env={"GRAFT_FAKE_EPOCH_S": "0.05"})
    with AdminServer(settings, rollout=FakeRollout(), runner=runner, app_kwargs=extra):
        stop.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


_PNGS: list[tuple[bytes, str]] = []


def _images(start: int, count: int) -> list[tuple[bytes, str]]:
    """Distinct Fashion-MNIST pictures as PNG bytes with their label (train set, then test set), encoded once."""
    from PIL import Image

    from training.fashion_mnist import FASHION_MNIST_DIR, FASHION_MNIST_LABELS, read_idx

    if len(_PNGS) < start + count:
        _PNGS.clear()
        sets = [(read_idx(FASHION_MNIST_DIR / f"{p}-images-idx3-ubyte.gz"),
                 read_idx(FASHION_MNIST_DIR / f"{p}-labels-idx1-ubyte.gz")) for p in ("train", "t10k")]  # fmt: skip
        # The originals, then the train pictures upside down (altered copies past 70,000).
        for flip, (images, labels) in [(False, sets[0]), (False, sets[1]), (True, sets[0])]:
            for i in range(len(images)):
                if len(_PNGS) == start + count:
                    break
                buf = io.BytesIO()
                Image.fromarray(images[i][::-1] if flip else images[i], mode="L").save(buf, "PNG")
                _PNGS.append((buf.getvalue(), FASHION_MNIST_LABELS[labels[i]]))
        if len(_PNGS) < start + count:
            raise SystemExit(f"this benchmark has {len(_PNGS)} pictures, not {start + count}")
    return _PNGS[start : start + count]


def _upload(c: httpx.Client, items: list[tuple[bytes, str]]) -> None:
    for k in range(0, len(items), BATCH):
        chunk = items[k : k + BATCH]
        files = [("file", (f"{k + j}.png", data, "image/png")) for j, (data, _) in enumerate(chunk)]
        data = {"label": [label for _, label in chunk], "new_label": "true"}
        r = c.post("/v1/samples/batch", files=files, data=data, headers=HEADERS, timeout=600)
        r.raise_for_status()


def _reasons(state: Path) -> tuple[int, int]:
    """Samples the intake pinned to the holdout as a near-duplicate of a holdout picture, and samples the balanced
    split moved to the other side of their hash (read-only)."""
    import sqlite3

    db = sqlite3.connect(f"file:{state / 'admin.sqlite3'}?mode=ro", uri=True)
    try:
        sql = "SELECT count(*) FROM samples WHERE split = 'holdout' AND split_reason LIKE 'near-duplicate%'"
        moved = "SELECT count(*) FROM samples WHERE split_reason = 'balanced split'"
        return int(db.execute(sql).fetchone()[0]), int(db.execute(moved).fetchone()[0])
    finally:
        db.close()


def time_job(c: httpx.Client, timeout_s: float = 3600) -> dict[str, Any]:
    """Start a retrain and time each phase it passes through (polled every 50 ms), until it ends."""
    r = c.post("/v1/retrain", json={"epochs": 1}, headers=HEADERS)
    r.raise_for_status()
    href, t0 = r.json()["href"], time.perf_counter()
    phases: dict[str, float] = {}
    last, since = "", t0
    while True:
        job = c.get(href, headers=HEADERS, timeout=60).json()
        now = time.perf_counter()
        if job["phase"] != last:
            if last:
                phases[last] = phases.get(last, 0.0) + now - since
            last, since = job["phase"], now
        if job["status"] not in ("queued", "running"):
            phases[last] = phases.get(last, 0.0) + now - since
            break
        if now - t0 > timeout_s:
            raise SystemExit(f"the job did not end in {timeout_s:.0f} s: {job}")
        time.sleep(0.05)
    total = time.perf_counter() - t0
    holdout = ((job.get("gate") or {}).get("candidate_all") or {}).get("n")
    return {"status": job["status"], "seconds": round(total, 2),
            "non_training_s": round(total - phases.get("training", 0.0), 2),
            "phases_s": {k: round(v, 2) for k, v in phases.items()},
            "holdout_images": holdout, "reason": job["reason"]}  # fmt: skip


def measure_admin(levels: list[int], window: int, tree: Path, work: Path, job: bool = False,
                  settings_env: dict[str, str] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    state, port = work / "state", _free_port()
    # The admin under test first on the path; settings_env: GRAFT_* variables for its settings (e.g. the split).
    env = {**os.environ, **(settings_env or {}), "PYTHONPATH": f"{tree}{os.pathsep}{REPO}"}
    # By path, not -m: the tree under test may have no bench/scale.py.
    child = subprocess.Popen([sys.executable, __file__, "--serve-admin", str(state), "--port", str(port)], cwd=tree,
                             env=env)  # fmt: skip
    rows = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or child.poll() is not None:
                    raise SystemExit("the admin did not become ready")
                time.sleep(0.5)
            stored = 0
            for level in levels:
                fill = max(0, level - window - stored)
                _upload(c, _images(stored, fill))
                stored += fill
                batch = _images(stored, window)
                cpu0, t0 = _cpu_s(child.pid), time.perf_counter()
                _upload(c, batch)
                wall, cpu = time.perf_counter() - t0, _cpu_s(child.pid) - cpu0
                stored += window
                lat = []
                for _ in range(20):
                    s0 = time.perf_counter()
                    stats = c.get("/v1/samples/stats", headers=HEADERS).json()
                    lat.append(1000 * (time.perf_counter() - s0))
                db = sum(f.stat().st_size for f in state.glob("*.sqlite3*"))
                pinned, moved = _reasons(state)
                rows.append({
                    "stored": stats["total"], "images_per_s": round(window / wall, 1),
                    "admin_cpu_ms_per_image": round(1000 * cpu / window, 2),
                    "stats_ms_p50": round(statistics.median(lat), 1), "stats_ms_max": round(max(lat), 1),
                    "holdout_share": round(stats["holdout"] / max(1, stats["total"]), 3),
                    "pinned_share": round(pinned / max(1, stats["total"]), 3),
                    "balanced_share": round(moved / max(1, stats["total"]), 3),
                    "admin_rss_mb": round(_rss_mb(child.pid), 1),
                    "admin_peak_rss_mb": round(_rss_mb(child.pid, "VmHWM"), 1),
                    "db_bytes_per_sample": round(db / max(1, stats["total"])),
                })  # fmt: skip
                if job:
                    rows[-1]["job"] = time_job(c)
                log.info("%s: %s", tree, rows[-1])
    finally:
        stop_child(child, 60, "the admin")
    return rows


def measure_train(sizes: list[int], tree: Path, work: Path) -> list[dict[str, Any]]:
    """``graft train`` peak RSS on ``n`` Fashion-MNIST images (80% train, 20% val), head recipe, one epoch."""
    from training.fashion_mnist import fashion_mnist_folder

    rows = []
    for n in sizes:
        data = fashion_mnist_folder(work / f"fm{n}", per_class=n * 8 // 100, val_per_class=n * 2 // 100)
        env = {**os.environ, "PYTHONPATH": str(tree)}
        cmd = ["/usr/bin/time", "-f", "%M %e", sys.executable, "-m", "graft.cli", "train", "--data", str(data),
               "--output", str(work / f"run{n}-{tree.name}"), "--recipe", "head", "--backbone", "mobilenet_v2",
               "--weights", str(WEIGHTS), "--epochs", "1", "--num-workers", "0", "--no-augment"]  # fmt: skip
        done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=True)
        kb, seconds = done.stderr.strip().splitlines()[-1].split()
        rows.append({"images": n, "peak_rss_mb": round(int(kb) / 1024, 1), "seconds": float(seconds)})
        log.info("%s: %s", tree, rows[-1])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve-admin", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--levels", default="1000,10000", help="stored samples at which to measure (comma-separated)")
    ap.add_argument("--window", type=int, default=640, help="uploads timed at each level (a multiple of 64)")
    ap.add_argument("--baseline-tree", type=Path, help="another checkout (e.g. main) to measure the same way")
    ap.add_argument("--baseline-only", action="store_true", help="measure the baseline tree alone")
    ap.add_argument("--baseline-env", action="append", default=[], metavar="GRAFT_NAME=VALUE",
                    help="a setting for the baseline's admin only, e.g. --baseline-tree . "
                    "--baseline-env GRAFT_HOLDOUT_SPLIT=hash (repeatable)")  # fmt: skip
    ap.add_argument("--job", action="store_true", help="also time a retraining job's phases at each level")
    ap.add_argument("--train-sizes", default="", help="e.g. 500,4000,16000: graft train peak RSS at these sizes")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scale.json")
    ap.add_argument("--keep", type=Path, help="work in this empty folder and keep it (bench/holdout_pins.py reads it)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    if args.serve_admin:
        serve_admin(args.serve_admin, args.port)
        return
    levels = [int(v) for v in args.levels.split(",") if v]
    sizes = [int(v) for v in args.train_sizes.split(",") if v]
    trees = {"this": REPO, **({"baseline": args.baseline_tree.resolve()} if args.baseline_tree else {})}
    if args.baseline_only:
        trees.pop("this")
    baseline_env = dict(kv.split("=", 1) for kv in args.baseline_env)
    if any(not k.startswith("GRAFT_") for k in baseline_env):
        raise SystemExit("--baseline-env takes GRAFT_NAME=VALUE settings")
    result: dict[str, Any] = {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg(), "batch": BATCH,
                              "window": args.window, "baseline_env": baseline_env, "admin": {},
                              "train": {}}  # fmt: skip
    for name, tree in trees.items():
        with tempfile.TemporaryDirectory(prefix=f"scale-{name}-") as scratch:
            tmp = str(args.keep / name) if args.keep else scratch
            Path(tmp).mkdir(parents=True, exist_ok=True)
            if levels:  # --levels '' with --train-sizes: training memory alone
                env = baseline_env if name == "baseline" else {}
                result["admin"][name] = measure_admin(levels, args.window, tree, Path(tmp), args.job, env)
            if sizes:
                result["train"][name] = measure_train(sizes, tree, Path(tmp))
    result["load_avg_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
