"""Captures and evaluation at scale (issue 25, parts 2 and 3): not a timed test, a measurement.

``captures``: N capture rows inserted into a real SQLite file through the store's own code (``CaptureStore.add``,
spread over the last 3 hours, 1,000 per segment file, the segment files present), then the real admin
(uvicorn, its background indexer) started on it in a subprocess while an inference worker's capture writer
appends real images at ``--rate`` per second; two clients call ``/readyz`` and ``GET /v1/review`` in a loop.
Reported: p50/p95/max of each, the admin's CPU seconds and peak RSS, database bytes. With ``--base`` (a
worktree of the old code: ``git worktree add /tmp/cap-base main``) the same runs on the old code first.

``pages``: a page of the margin queue at depths 0 to 100,000 by ``offset`` and by the keyset cursor ``after``, on
the database ``captures --filled`` left (this tree only: the old one has no cursor).

``eval``: the gate's champion evaluation on a holdout of ``--holdout`` real ants/bees images (copies of
../shared's), then again after ``--new`` images joined the holdout: the champion's predictions with the cache
(only the new images) and without it (the whole holdout, as before), with the tiny real model.

    PYTHONPATH=$PWD .venv/bin/python bench/scale_captures.py captures --rows 1000000 --base /tmp/cap-base \
        --filled /tmp/cap-filled   # filled once (minutes at 1M rows), kept, and copied for each tree's run
    PYTHONPATH=$PWD .venv/bin/python bench/scale_captures.py pages --filled /tmp/cap-filled
    PYTHONPATH=$PWD .venv/bin/python bench/scale_captures.py eval --holdout 400 --new 40

The script imports only modules both code trees have, so the old tree runs it unchanged.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from graft.core.util import stop_child

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
MODEL = "graft"
PER_SEGMENT = 1000


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def _settings(work: Path, port: int = 0) -> Any:
    from tests.admin.test_api import settings

    return settings(work, admin_port=port or 8090, capture_scan_s=1.0, capture_index_max=10**8)


# ---------------------------------------------------------------------------------------------- subprocesses
def fill(work: Path, rows: int) -> None:
    """Rows through the store's own code, in the admin's database; empty segment files stand for the workers'."""
    from admin.store.captures import CaptureStore
    from admin.store.db import Database
    from graft.core.capture import CaptureRecord

    st = _settings(work)
    db = Database(st.db_path)
    store = CaptureStore(db)
    folder = st.capture_path / MODEL
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    now = time.time()
    t0 = time.monotonic()
    for start in range(0, rows, 10_000):
        with store.batch():
            for i in range(start, min(rows, start + 10_000)):
                at = now - 3 * 3600 + 3 * 3600 * i / rows
                top = rng.uniform(0.5, 0.99)
                labels = ["ants", "bees"] if rng.random() < 0.5 else ["bees", "ants"]
                rec = CaptureRecord(id=f"{int(at * 1e9):020d}-{i:08x}", model_name=MODEL, model_version="1",
                                    captured_at=at, request_id=str(i), image_type="png", image_bytes=300,
                                    labels=labels, scores=[top, 1 - top], margin=2 * top - 1,
                                    entropy=rng.uniform(0, 0.7))  # fmt: skip
                segment = f"{i // PER_SEGMENT:08d}-bench.seg"
                status = "queued" if rng.random() < 0.6 else "duplicate"
                store.add(rec, (segment, 0, 300), status, pixels_sha=f"{i:064x}", phash=f"{rng.getrandbits(64):016x}")
        for s in range(start // PER_SEGMENT, min(rows, start + 10_000) // PER_SEGMENT + 1):
            (folder / f"{s:08d}-bench.seg").touch()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    print(json.dumps({"rows": rows, "fill_s": round(time.monotonic() - t0, 1)}))


def serve_admin(work: Path, port: int) -> None:
    from admin.server import AdminServer
    from tests.support.fakes import FakeRollout, fake_evaluate, placeholder_export

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    extra = {"evaluate": fake_evaluate, "export": placeholder_export}
    with AdminServer(_settings(work, port), rollout=FakeRollout(), app_kwargs=extra):
        print("serving", flush=True)
        stop.wait()


# ---------------------------------------------------------------------------------------------- the captures run
def _png(i: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (32, 32), random.Random(i).randbytes(3072)).save(buf, "PNG")
    return buf.getvalue()


def _loop(url: str, path: str, headers: dict[str, str], stop: threading.Event, out: list[float],
          errors: list[str]) -> None:  # fmt: skip
    import httpx

    with httpx.Client(base_url=url, timeout=60) as c:
        while not stop.is_set():
            t = time.perf_counter()
            try:
                r = c.get(path, headers=headers)
                if r.status_code != 200:
                    errors.append(f"{path} {r.status_code}")
            except httpx.HTTPError as e:
                errors.append(f"{path} {type(e).__name__}")
            out.append(time.perf_counter() - t)
            stop.wait(0.05)


def _filled(tree: Path, rows: int, work: Path, reuse: Path | None) -> dict[str, Any]:
    """Fill ``work`` with ``rows`` captures; with ``reuse``, fill that folder once (the first tree's code: a newer
    tree migrates the file when its admin opens it) and copy it, so that every tree starts from the same file."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    target = reuse if reuse is not None else work
    marker = target / "filled.json"
    if reuse is None or not marker.is_file() or json.loads(marker.read_text())["rows"] != rows:
        target.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, str(HERE), "_fill", str(target), str(rows)], env=env, cwd=tree,
                              check=True, capture_output=True, text=True)  # fmt: skip
        marker.write_text(done.stdout.strip().splitlines()[-1])
    result: dict[str, Any] = json.loads(marker.read_text())
    if reuse is not None:
        shutil.copytree(reuse, work, dirs_exist_ok=True)
        result["reused"] = str(reuse)
    return result


def run_captures(tree: Path, rows: int, rate: float, duration: float, work: Path,
                 reuse: Path | None = None) -> dict[str, Any]:  # fmt: skip
    import httpx
    import psutil

    from tests.support.auth import SAMPLER

    env = {**os.environ, "PYTHONPATH": str(tree)}
    result = _filled(tree, rows, work, reuse)
    with FreePort() as port:
        pass
    log = open(work / "admin.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, str(HERE), "_admin", str(work), str(port)], env=env, cwd=tree,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    print(f"admin pid {proc.pid} ({tree})", file=sys.stderr, flush=True)  # for a profiler: py-spy record -p PID
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=60).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() - t0 > 600:
                raise RuntimeError(f"the admin did not get ready: {(work / 'admin.log').read_text()[-2000:]}")
            time.sleep(0.5)
        result["ready_s"] = round(time.monotonic() - t0, 1)
        cpu0 = psutil.Process(proc.pid).cpu_times()
        stop = threading.Event()
        lat: dict[str, list[float]] = {"/readyz": [], "/v1/review": []}
        errors: list[str] = []
        threads = [threading.Thread(target=_loop, args=(url, p, SAMPLER if "v1" in p else {}, stop, lat[p], errors))
                   for p in lat]  # fmt: skip
        writer_stop = threading.Event()
        written = [0]
        writer = threading.Thread(target=_write_captures, args=(work, rate, writer_stop, written))
        for t in [*threads, writer]:
            t.start()
        time.sleep(duration)
        stop.set()
        writer_stop.set()
        for t in [*threads, writer]:
            t.join(120)
        cpu1 = psutil.Process(proc.pid).cpu_times()
        hwm = _vm_hwm_mb(proc.pid)
    finally:
        stop_child(proc, 60, "the admin")
        log.close()
    db = _settings(work).db_path
    result.update({
        "captures_written_during_load": written[0], "load_s": duration,
        "admin_cpu_s": round(cpu1.user + cpu1.system - cpu0.user - cpu0.system, 1), "admin_peak_rss_mb": round(hwm),
        "db_mb": round(sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) / 2**20, 1),
        "errors": errors[:10], "error_count": len(errors),
        "load_average_1m": round(os.getloadavg()[0], 1),  # the machine's, this run's own load included
    })  # fmt: skip
    for path, values in lat.items():
        result[path] = {"n": len(values), "p50_ms": round(1000 * percentile(values, 50), 1),
                        "p95_ms": round(1000 * percentile(values, 95), 1),
                        "max_ms": round(1000 * max(values), 1)}  # fmt: skip
    return result


def _write_captures(work: Path, rate: float, stop: threading.Event, written: list[int]) -> None:
    """What the inference workers do: the handler's own capture writer appending served images."""
    from handlers.capture import CaptureWriter

    def count(outcome: str, n: int) -> None:
        written[0] += n if outcome == "stored" else 0

    writer = CaptureWriter(_settings(work).capture_path, MODEL, "1", ["ants", "bees"], 1.0, 10**10, count)
    images = [_png(i) for i in range(200)]
    i = 0
    t0 = time.monotonic()
    while not stop.is_set():
        p = random.Random(i).uniform(0.5, 0.99)
        writer.offer(images[i % len(images)], [p, 1 - p], f"bench-{i}")  # repeats: the dedupe's work too
        i += 1
        stop.wait(max(0.0, t0 + i / rate - time.monotonic()))


class FreePort:
    def __enter__(self) -> int:
        import socket

        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        return int(self.s.getsockname()[1])

    def __exit__(self, *_: object) -> None:
        self.s.close()


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------- the eval run
def run_eval(holdout: int, new: int, work: Path) -> dict[str, Any]:
    from admin.domain.jobs import default_evaluate
    from admin.domain.prediction_cache import CACHE_NAME, cached_predict
    from tests.support.artifacts import cached_store, images

    run_src, _ = cached_store(work / "artifacts")
    run = work / "champion"
    shutil.copytree(run_src, run)
    (run / CACHE_NAME).unlink(missing_ok=True)
    pool = images("val", per_class=60) + images("train", per_class=100)
    files: list[tuple[Path, str]] = []
    (work / "holdout").mkdir()
    for i in range(holdout + new):  # copies under their own names: each is its own holdout image
        src, label = pool[i % len(pool)]
        dst = work / "holdout" / f"{i:06d}-{src.name}"
        shutil.copyfile(src, dst)
        files.append((dst, label))
    before, after = files[:holdout], files
    t = time.monotonic()
    cached_predict(default_evaluate, run, before, "cpu")  # the previous job: the whole holdout, cache filled
    first = time.monotonic() - t
    t = time.monotonic()
    fresh, _ = default_evaluate(run, after, "cpu")  # the old code: the champion over the whole holdout again
    old = time.monotonic() - t
    t = time.monotonic()
    preds, _, asked = cached_predict(default_evaluate, run, after, "cpu")
    cached = time.monotonic() - t
    assert preds == fresh, "the cached predictions must equal a fresh evaluation"
    return {"holdout": holdout, "new": new, "first_job_champion_s": round(first, 1),
            "champion_eval_without_cache_s": round(old, 1), "champion_eval_with_cache_s": round(cached, 1),
            "images_predicted_with_cache": asked, "peak_rss_mb": round(_vm_hwm_mb(os.getpid()))}  # fmt: skip


# ---------------------------------------------------------------------------------------------- the pages run
def run_pages(filled: Path, depths: list[int], repeat: int = 5) -> dict[str, Any]:
    """A page of 20 at each depth of the margin queue, by ``offset`` (the rows before it are read and skipped) and
    by the keyset cursor ``after`` (a seek): the median query time of ``repeat``, on the filled database."""
    from admin.store.captures import CaptureStore, cursor_of
    from admin.store.db import Database

    db = Database(_settings(filled).db_path)
    store = CaptureStore(db)
    out: dict[str, Any] = {}

    def timed(**kw: Any) -> float:
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            store.review(MODEL, "margin", 20, **kw)
            times.append(time.perf_counter() - t)
        return round(1000 * sorted(times)[len(times) // 2], 2)

    for depth in depths:
        last = store.review(MODEL, "margin", 1, offset=depth - 1)[0] if depth else None
        out[str(depth)] = {"offset_ms": timed(offset=depth),
                           "after_ms": timed(after=cursor_of(last, "margin")) if last else timed()}  # fmt: skip
    db.close()
    return {"depths": out, "peak_rss_mb": round(_vm_hwm_mb(os.getpid()))}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_fill":
        return fill(Path(sys.argv[2]), int(sys.argv[3]))
    if len(sys.argv) > 1 and sys.argv[1] == "_admin":
        return serve_admin(Path(sys.argv[2]), int(sys.argv[3]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    cap = sub.add_parser("captures")
    cap.add_argument("--rows", type=int, default=1_000_000)
    cap.add_argument("--rate", type=float, default=50.0, help="captures per second written during the load")
    cap.add_argument("--duration", type=float, default=60.0)
    cap.add_argument("--base", type=Path, help="a worktree of the old code, measured first")
    cap.add_argument("--filled", type=Path, help="fill this folder once (kept) and copy it for each run")
    cap.add_argument("--out", type=Path, default=REPO / "bench/results/scale_captures.json")
    pages = sub.add_parser("pages")
    pages.add_argument("--filled", type=Path, required=True, help="a folder `captures --filled` filled")
    pages.add_argument("--depths", default="0,1000,10000,100000")
    pages.add_argument("--out", type=Path, default=REPO / "bench/results/scale_captures_pages.json")
    ev = sub.add_parser("eval")
    ev.add_argument("--holdout", type=int, default=400)
    ev.add_argument("--new", type=int, default=40)
    ev.add_argument("--out", type=Path, default=REPO / "bench/results/scale_captures_eval.json")
    args = ap.parse_args()
    report: dict[str, Any] = {"machine": f"{platform.node()}: {os.cpu_count()} cores shared with other work",
                              "argv": sys.argv[1:]}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="scale-captures-") as tmp:
        if args.what == "captures":
            trees = ([("baseline", args.base.resolve())] if args.base else []) + [("new", REPO)]
            for name, tree in trees:
                work = Path(tmp) / name
                work.mkdir()
                report[name] = run_captures(tree, args.rows, args.rate, args.duration, work, args.filled)
                print(name, json.dumps(report[name]), flush=True)
        elif args.what == "pages":
            report["pages"] = run_pages(args.filled, [int(d) for d in args.depths.split(",")])
            print(json.dumps(report["pages"]), flush=True)
        else:
            report["eval"] = run_eval(args.holdout, args.new, Path(tmp))
            print(json.dumps(report["eval"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
