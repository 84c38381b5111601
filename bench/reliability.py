"""Reliability suite: the running service (real ``graft serve``, real TorchServe, real admin) under hostile
input and faults, traffic to 127.0.0.1 only, bounded in count and time (a few minutes in all).

1. >= 1,000 malformed and hostile inference inputs mixed with valid ones at concurrency 8: every malformed
   one a 4xx, every valid one a 200, zero worker restarts;
2. >= 300 hostile admin requests (auth variants, labels, uploads, multipart, bodies): every one a 4xx,
   nothing stored that should not be;
3. 60 s at concurrency 32 of valid traffic: zero errors, p50/p99 (a single-client pass is the baseline);
4. a worker killed with SIGKILL under load: failed requests and the time to the next success;
5. a promotion and a rollback under load: zero failed requests;
6. ``graft serve`` (the admin) killed with SIGKILL in the middle of a retraining job, then restarted: the job
   marked interrupted, no orphan, the default unchanged, zero samples lost;
7. 64, then 1,000 connections that never finish their headers: probes and an admin keep their answers within 1 s;
8. the insecure dev mode against a web page: cross-site forms and fetches, DNS rebinding; nothing stored;
9. a picture captured three times and once re-encoded, erased: no copy left, a later capture of it erased too;
10. a day (``--capture-hours``) of tiny captures at 100/s against a 1 MB budget, simulated through the handler's
    writer and the admin's index on real files and SQLite: the database's size stays flat;
11. wrong bearer tokens from 8 clients at one address: backed off (429), the token's holder and probes keep 200s;
12. 64 slow sign-in bodies from one address: probes, an admin and another user keep their answers within 1 s.

    .venv/bin/python bench/reliability.py --json bench/results/reliability.json --markdown bench/results/reliability.md

``--short`` runs every check with smaller counts (200 inference inputs, 10 s of load, 0.05 simulated hours of
captures, 1,000 idle connections still); ``--only token-flood,slow-sign-ins`` runs the checks named (names in
:data:`CHECKS`), each against its own service as the full run does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)] if str(REPO) not in sys.path else []

import httpx  # noqa: E402
import psutil  # noqa: E402

from bench._attacks import (  # noqa: E402
    capture_day,
    erase_repeated_picture,
    idle_connections,
    insecure_web_pages,
    slow_sign_ins,
    token_flood,
)
from bench._hostile import admin_cases, inference_cases  # noqa: E402
from bench._service import ADMIN_TOKEN, SAMPLES_TOKEN, Service, run_job  # noqa: E402
from bench._service import serving as _serving  # noqa: E402
from bench.load import load  # noqa: E402

log = logging.getLogger("bench.reliability")
DATA = REPO.parent / "shared" / "data" / "hymenoptera"
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2_imagenet.pth"
NAME = "antsbees"


def jpegs(split: str, label: str) -> list[Path]:
    return sorted(p for p in (DATA / split / label).iterdir() if p.suffix.lower() == ".jpg")


def prepare(work: Path) -> Path:
    """A first model: MobileNetV2 head on 20 images per class; its card records its data folder."""
    data = work / "data"
    for label in ("ants", "bees"):
        for split, files in (("train", jpegs("train", label)[:20]), ("val", jpegs("val", label)[:20])):
            (data / split / label).mkdir(parents=True, exist_ok=True)
            for f in files:
                if not (data / split / label / f.name).exists():
                    (data / split / label / f.name).symlink_to(f)
    run = work / "runs" / NAME
    if not (run / "model.json").is_file():
        subprocess.run([sys.executable, "-m", "graft.cli", "train", "--data", str(data), "--output", str(run),
                        "--backbone", "mobilenet_v2", "--weights", str(WEIGHTS), "--epochs", "5"],
                       check=True, cwd=REPO)  # fmt: skip
    return run


# --------------------------------------------------------------------------- 1. hostile inference


async def _send_all(url: str, cases: list[Any], concurrency: int, headers: dict[str, str]) -> list[tuple[Any, int]]:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for c in cases:
        queue.put_nowait(c)
    results: list[tuple[Any, int]] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            case = queue.get_nowait()
            try:
                r = await client.post(url, content=case.body, headers={**headers, **case.headers})
                results.append((case, r.status_code))
            except httpx.HTTPError as e:
                results.append((case, -1))
                log.warning("%s: %r", case.name, e)

    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return results


def hostile_inference(svc: Service, n: int) -> dict[str, Any]:
    valid = [p.read_bytes() for p in jpegs("val", "ants")[20:28] + jpegs("val", "bees")[20:28]]
    kinds = inference_cases(valid)
    cases = [kinds[i % len(kinds)] for i in range(max(n, len(kinds)))]
    before = svc.workers()
    results = asyncio.run(_send_all(f"{svc.ts.inference_url}/predictions/{NAME}", cases, 8, svc.ts.headers()))
    wrong = [(c.name, s) for c, s in results if not (s == 200 if c.expect == "200" else 400 <= s < 500)]
    bad = [s for c, s in results if c.expect != "200"]
    return {
        "check": "hostile inference inputs, concurrency 8", "requests": len(results),
        "malformed": len(bad), "valid": len(results) - len(bad),
        "statuses": dict(Counter(s for _, s in results)), "wrong": sorted(set(wrong))[:10],
        "worker_restarts": len(svc.workers() - before), "passed": not wrong and svc.workers() == before,
    }  # fmt: skip


# --------------------------------------------------------------------------- 2. hostile admin requests


def _state(svc: Service) -> tuple[Any, ...]:
    h = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    stats = svc.admin.get("/v1/samples/stats", headers=h).json()
    labels = sorted(x["name"] for x in svc.admin.get("/v1/labels", headers=h).json()["labels"])
    jobs = len(svc.admin.get("/v1/jobs", headers=h).json()["jobs"])
    return stats["total"], tuple(labels), jobs


def hostile_admin(svc: Service) -> dict[str, Any]:
    """Every case a 4xx, nothing stored. Wrong tokens back off their address (a 429, even for a right token, while
    it waits), so they come from an address of their own (127.0.0.78): the cases with a right token (bad labels,
    uploads, bodies) from 127.0.0.77 still reach the checks they are about, and the bench's own client
    (127.0.0.1) is never backed off."""
    image = jpegs("val", "ants")[30].read_bytes()
    cases = admin_cases(ADMIN_TOKEN, SAMPLES_TOKEN, image)
    right = {f"Bearer {ADMIN_TOKEN}", f"Bearer {SAMPLES_TOKEN}"}
    url = str(svc.admin.base_url)
    with_token, guesser = (httpx.Client(base_url=url, timeout=120, transport=httpx.HTTPTransport(local_address=a))
                           for a in ("127.0.0.77", "127.0.0.78"))  # fmt: skip
    before = _state(svc)
    statuses: Counter[int] = Counter()
    wrong = []
    t0 = time.process_time()
    for c in cases:
        client = with_token if c.headers.get("Authorization") in right else guesser
        r = client.request(c.method, c.path, headers=c.headers, content=c.content, files=c.files, data=c.data)
        statuses[r.status_code] += 1
        if not 400 <= r.status_code < 500:
            wrong.append((c.name, r.status_code, r.text[:120]))
    with_token.close()
    guesser.close()
    after = _state(svc)
    return {
        "check": "hostile admin requests", "requests": len(cases), "statuses": dict(statuses), "wrong": wrong[:10],
        "stored_before_after": [before, after], "passed": not wrong and before == after,
        "client_cpu_s": round(time.process_time() - t0, 1),
    }  # fmt: skip


# --------------------------------------------------------------------------- 3-5. load, a killed worker, a swap


def valid_load(svc: Service, seconds: float, concurrency: int) -> dict[str, Any]:
    bodies = [p.read_bytes() for p in jpegs("val", "ants")[:30] + jpegs("val", "bees")[:30]]
    url, headers = f"{svc.ts.inference_url}/predictions/{NAME}", {**svc.ts.headers(), "Content-Type": "image/jpeg"}
    single = load(url, headers, bodies, 1, 2, 8)
    loaded = load(url, headers, bodies, concurrency, 3, seconds)
    return {
        "check": f"{seconds:.0f} s of valid traffic, concurrency {concurrency}", "img_s": round(loaded["img_s"], 1),
        "errors": loaded["errors"], "p50_ms": round(loaded["p50_ms"], 1), "p99_ms": round(loaded["p99_ms"], 1),
        "baseline_concurrency_1": {k: round(single[k], 1) for k in ("img_s", "p50_ms", "p99_ms")},
        "passed": loaded["errors"] == 0 and loaded["img_s"] > 0,
    }  # fmt: skip


class Stream:
    """Clients sending valid predictions in threads; every failure with its time."""

    def __init__(self, svc: Service, threads: int = 8):
        import threading

        self.ok: list[float] = []
        self.failed: list[tuple[float, str]] = []
        self._stop = threading.Event()
        body = jpegs("val", "bees")[0].read_bytes()
        url = f"{svc.ts.inference_url}/predictions/{NAME}"

        def run() -> None:
            with httpx.Client(timeout=60) as c:
                while not self._stop.is_set():
                    try:
                        r = c.post(url, content=body, headers={**svc.ts.headers(), "Content-Type": "image/jpeg"})
                        (self.ok.append(time.monotonic()) if r.status_code == 200
                         else self.failed.append((time.monotonic(), f"{r.status_code} {r.text[:80]}")))  # fmt: skip
                    except httpx.HTTPError as e:
                        self.failed.append((time.monotonic(), repr(e)))

        self._threads = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)


def worker_kill(svc: Service) -> dict[str, Any]:
    stream = Stream(svc)
    time.sleep(5)
    (victim,) = sorted(svc.workers())[:1]
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    time.sleep(20)
    stream.stop()
    after = [t for t in stream.ok if t > killed_at]
    return {
        "check": "a worker killed with SIGKILL under load (8 clients)", "requests": len(stream.ok) + len(stream.failed),
        "failed": len(stream.failed), "failures": sorted({m for _, m in stream.failed})[:3],
        "next_success_s": round(min(after) - killed_at, 2) if after else None, "passed": bool(after),
    }  # fmt: skip


def serving(work: Path, run: Path, ports: list[int] | None = None) -> Any:
    return _serving(work, run, NAME, ports)


def _job(svc: Service, body: dict[str, Any] | None = None, wait: bool = True) -> dict[str, Any]:
    if wait:
        return dict(run_job(svc, body))
    h = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    return {"id": svc.admin.post("/v1/retrain", json=body or {}, headers=h).json()["job_id"]}


def post_samples(svc: Service) -> int:
    h = {"Authorization": f"Bearer {SAMPLES_TOKEN}"}
    for label in ("ants", "bees"):
        files = [("file", (f.name, f.read_bytes(), "image/jpeg")) for f in jpegs("train", label)[20:40]]
        r = svc.admin.post("/v1/samples/batch", files=files, data={"label": label}, headers=h)
        r.raise_for_status()
    return int(svc.admin.get("/v1/samples/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()["total"])


def swap_under_load(svc: Service) -> dict[str, Any]:
    h = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    job = _job(svc)
    version = job["candidate_version"]
    stream = Stream(svc)
    time.sleep(3)
    default = svc.admin.get("/v1/models", headers=h).json()["default"]
    steps = []
    if default != version:  # the gate kept it out: an admin promotes it by hand, which is what is measured
        steps.append(svc.admin.post(f"/v1/models/{version}/promote", params={"force": "true"}, headers=h).status_code)
    steps.append(svc.admin.post("/v1/rollback", headers=h).status_code)
    steps.append(svc.admin.post(f"/v1/models/{version}/promote", params={"force": "true"}, headers=h).status_code)
    time.sleep(3)
    stream.stop()
    return {
        "check": "a promotion and a rollback under load (8 clients)", "job": job["status"], "steps": steps,
        "requests": len(stream.ok) + len(stream.failed), "failed": len(stream.failed),
        "passed": not stream.failed and all(s == 200 for s in steps),
    }  # fmt: skip


# --------------------------------------------------------------------------- 6. the admin killed mid-job


def admin_kill(work: Path, run: Path, samples: int) -> dict[str, Any]:
    h = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with serving(work, run) as svc:
        default = svc.admin.get("/v1/models", headers=h).json()["default"]
        job_id = _job(svc, {"epochs": 200}, wait=False)["id"]
        trainer = None
        for _ in range(120):
            job = svc.admin.get(f"/v1/jobs/{job_id}", headers=h).json()
            kids = [p for p in psutil.Process(svc.proc.pid).children(recursive=True) if "train" in p.cmdline()]
            if job["phase"] == "training" and kids:
                trainer = kids[0].pid
                break
            time.sleep(0.5)
        os.kill(svc.proc.pid, signal.SIGKILL)
        svc.proc.wait(10)
        ports = svc.ports
        time.sleep(0.5)
    gone = trainer is None or not psutil.pid_exists(trainer) or psutil.Process(trainer).status() == "zombie"
    with serving(work, run, ports) as svc2:
        job = svc2.admin.get(f"/v1/jobs/{job_id}", headers=h).json()
        after = svc2.admin.get("/v1/models", headers=h).json()["default"]
        total = svc2.admin.get("/v1/samples/stats", headers=h).json()["total"]
    return {
        "check": "graft serve (the admin) killed with SIGKILL mid-job, restarted", "job": job["status"],
        "reason": job["reason"][:90], "trainer_orphaned": not gone, "default_before_after": [default, after],
        "samples_before_after": [samples, total],
        "passed": job["status"] == "failed" and job["reason"].startswith("interrupted") and gone
                  and default == after and total == samples,
    }  # fmt: skip


# --------------------------------------------------------------------------- 8-9. insecure dev mode, erasure


def insecure_mode(work: Path, run: Path) -> list[dict[str, Any]]:
    """``graft serve`` with GRAFT_INSECURE_DEV and capture on: a web page's requests, then an erasure."""
    image = jpegs("val", "ants")[31].read_bytes()
    args = ["--capture-rate", "1", "--capture-budget-mb", "64"]
    with _serving(work, run, NAME, None, args=args, env={"GRAFT_INSECURE_DEV": "true"}) as svc:
        before = svc.workers()
        rows = [insecure_web_pages(svc, image), erase_repeated_picture(svc, work / "state" / "captures", image, NAME)]
        rows[-1]["worker_restarts"] = len(svc.workers() - before)
        rows[-1]["passed"] = rows[-1]["passed"] and svc.workers() == before
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items())
    return json.dumps(value) if isinstance(value, list | str) else str(value)


def markdown(rows: list[dict[str, Any]], machine: str, peak_rss_mb: Any) -> str:
    lines = [f"Machine: {machine}. Peak RSS of the serving processes (MB): {_cell(peak_rss_mb)}.", "",
             "| check | result | passed |", "|---|---|---|"]  # fmt: skip
    for r in rows:
        detail = {k: v for k, v in r.items() if k not in ("check", "passed", "wrong", "failures", "statuses")}
        lines.append(f"| {r['check']} | {_cell(detail)[:400]} | {'yes' if r['passed'] else '**no**'} |")
    return "\n".join(lines) + "\n"


# The checks against one running service, in order (the two sign-in attacks last: their addresses stay backed off).
CHECKS: dict[str, Callable[[Service, argparse.Namespace], dict[str, Any]]] = {
    "hostile-inference": lambda svc, a: hostile_inference(svc, a.inference_requests),
    "hostile-admin": lambda svc, a: hostile_admin(svc),
    "load": lambda svc, a: valid_load(svc, a.load_seconds, 32),
    "worker-kill": lambda svc, a: worker_kill(svc),
    "swap": lambda svc, a: swap_under_load(svc),
    "idle-connections": lambda svc, a: idle_connections(svc),
    "token-flood": lambda svc, a: token_flood(svc, a.attack_seconds),
    "slow-sign-ins": lambda svc, a: slow_sign_ins(svc, 64, a.attack_seconds + 2),
}
LATER = ("admin-kill", "insecure-mode", "capture-day")  # each starts its own service, or none


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--workdir", type=Path, help="where models and state go (default: a temporary folder)")
    ap.add_argument("--inference-requests", type=int, default=1200)
    ap.add_argument("--load-seconds", type=float, default=60)
    ap.add_argument("--attack-seconds", type=float, default=10, help="how long each sign-in attack lasts")
    ap.add_argument("--capture-hours", type=float, default=1.0, help="simulated hours of captures at 100/s (24: a day)")
    ap.add_argument("--short", action="store_true", help="smaller counts: 200 inputs, 10 s of load, 0.05 h of captures")
    ap.add_argument("--only", type=lambda v: v.split(","), help=f"checks to run: {', '.join([*CHECKS, *LATER])}")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    if unknown := set(args.only or ()) - {*CHECKS, *LATER}:
        ap.error(f"no check {', '.join(sorted(unknown))}: choose from {', '.join([*CHECKS, *LATER])}")
    if args.short:
        args.inference_requests, args.load_seconds = min(args.inference_requests, 200), min(args.load_seconds, 10)
        args.capture_hours = min(args.capture_hours, 0.05)
    return args


def main() -> int:
    args = arguments()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not DATA.is_dir() or not WEIGHTS.is_file():
        raise SystemExit(f"needs ../shared (ants/bees and MobileNetV2 weights) at {DATA.parent.parent}")
    chosen = set(args.only or [*CHECKS, *LATER])
    work = args.workdir or Path(tempfile.mkdtemp(prefix="graft-reliability-"))
    shutil.rmtree(work / "state", ignore_errors=True)
    run = prepare(work) if chosen - {"capture-day"} else work
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    peak: dict[str, float] = {}
    samples = 0
    if chosen & {*CHECKS, "admin-kill"}:
        with serving(work, run) as svc:
            samples = post_samples(svc)
            for name in [n for n in CHECKS if n in chosen]:
                rows.append(CHECKS[name](svc, args))
                log.info("%s: %s", rows[-1]["check"], "passed" if rows[-1]["passed"] else "FAILED")
            peak = svc.peak_rss_mb()
    if "admin-kill" in chosen:
        rows.append(admin_kill(work, run, samples))
    if "insecure-mode" in chosen:
        rows += insecure_mode(work, run)
    if "capture-day" in chosen:
        rows.append(capture_day(args.capture_hours))
    machine = f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"
    result = {"machine": machine, "seconds": round(time.monotonic() - t0), "peak_rss_mb": peak, "rows": rows}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(rows, machine, peak))
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
