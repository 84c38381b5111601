"""Attacks on the admin alone (issue 22, second round): slow sign-in bodies, and guessing the API's bearer token.

The admin runs in this process on 127.0.0.1 (uvicorn with admin/connections.py, as ``graft admin`` runs it), with a
toy model card (tests/support/fakes.py) and no TorchServe: these attacks never reach a worker. Other clients are
other loopback addresses (127.0.0.x). Slow bodies are measured twice in the same run: with the upload limits off
(the baseline: what the admin did before) and on.

    PYTHONPATH=$PWD .venv/bin/python bench/admin_attacks.py --json bench/results/admin_attacks.json
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from admin.api import guard
from admin.api.sessions import FREE_FAILURES
from admin.server import AdminServer
from admin.settings import AdminSettings
from bench.load import percentile
from tests.support.auth import ADMIN, ADMIN_TOKEN, SAMPLES_TOKEN
from tests.support.fakes import FakeRollout, fake_evaluate, placeholder_export, write_toy_card
from tests.support.waiting import wait_ready

SMALL_BODY_TIMEOUT_S = guard.SMALL_BODY_TIMEOUT_S

LOGIN_HEAD = (b"POST /console/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
              b"Content-Length: 1000\r\n\r\ntoken=")  # fmt: skip


def admin(work: Path, port: int = 0) -> AdminServer:
    write_toy_card(work / "initial", ["ants", "bees"], 0.6)
    st = AdminSettings(admin_token=ADMIN_TOKEN, samples_token=SAMPLES_TOKEN, admin_port=port,
                       state_dir=work / "state", model_store=work / "store", model_name="graft",
                       initial_run=work / "initial", rollout="none")  # fmt: skip
    return AdminServer(st, rollout=FakeRollout(), app_kwargs={"evaluate": fake_evaluate, "export": placeholder_export})


def _slow_sign_ins(port: int, n: int, ready: Any, stop: Any, answers: Any) -> None:
    """In a process of its own (the attacker is not the server's GIL): ``n`` sign-in requests whose 1,000-byte body
    comes a byte a second, each reopened as soon as the server answers or closes it. Puts what it was answered."""

    def open_one() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(LOGIN_HEAD)
        s.setblocking(False)
        return s

    seen = Counter[str]()
    socks = [open_one() for _ in range(n)]
    ready.set()
    while not stop.wait(1.0):
        for i, s in enumerate(socks):
            try:
                got = s.recv(64)
                seen[got.split(b" ", 2)[1].decode() if got else "closed"] += 1
            except BlockingIOError:  # nothing from the server: send the next byte
                try:
                    s.sendall(b"a")
                    continue
                except OSError:
                    seen["closed"] += 1
            except OSError:
                seen["closed"] += 1
            s.close()
            socks[i] = open_one()
    for s in socks:
        s.close()
    answers.put(dict(seen))


class SlowSignIns:
    def __init__(self, port: int, n: int):
        ctx = multiprocessing.get_context("spawn")  # not fork: the server's threads are running
        self._stop, self._answers, ready = ctx.Event(), ctx.Queue(), ctx.Event()
        self._proc = ctx.Process(target=_slow_sign_ins, args=(port, n, ready, self._stop, self._answers), daemon=True)
        self._proc.start()
        if not ready.wait(60):
            raise TimeoutError("the attacker's sockets did not open within 60 s")

    def stop(self) -> dict[str, int]:
        self._stop.set()
        answers: dict[str, int] = self._answers.get(timeout=30)
        self._proc.join(10)
        return answers


def everyone_else(url: str, seconds: float, token: str = ADMIN_TOKEN) -> dict[str, Any]:
    """Probes, an admin and another user signing in (from 127.0.0.9), each on a new connection, for ``seconds``;
    ``token``: the admin's (bench/reliability.py's service has its own)."""
    statuses, latencies = Counter[str](), []
    admin_headers = {"Authorization": f"Bearer {token}"}
    other = httpx.HTTPTransport(local_address="127.0.0.9")
    asks = [("GET", "/healthz", {}), ("GET", "/readyz", {}), ("GET", "/v1/models", admin_headers),
            ("POST", "/console/login", {})]  # fmt: skip
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        for method, path, headers in asks:
            t0 = time.monotonic()
            try:
                with httpx.Client(base_url=url, transport=other, timeout=5) as c:
                    data = {"token": token} if method == "POST" else None
                    statuses[str(c.request(method, path, headers=headers, data=data).status_code)] += 1
            except httpx.HTTPError as e:
                statuses[type(e).__name__] += 1
            latencies.append(time.monotonic() - t0)
        time.sleep(0.05)
    expected = {"200", "303"}  # the other user signs in: a 303 to the console
    return {"requests": sum(statuses.values()), "statuses": dict(statuses),
            "p50_ms": round(1000 * percentile(latencies, 50), 1), "max_ms": round(1000 * max(latencies), 1),
            "ok": set(statuses) <= expected and max(latencies) < 1.0}  # fmt: skip


def slow_bodies(work: Path, n: int, seconds: float) -> dict[str, Any]:
    what = f"{n} slow sign-in bodies from one address (a byte a second, reopened when answered), {seconds:g} s"
    out: dict[str, Any] = {"check": what + ", while probes, an admin and another user ask"}
    for mode in ("limits off (baseline)", "limits on"):
        baseline = mode.startswith("limits off")
        # The baseline: no upload limits, and a small body given the whole body timeout (30 s), as before.
        guard.SMALL_BODY_TIMEOUT_S = 30.0 if baseline else SMALL_BODY_TIMEOUT_S
        with admin(work / mode.split()[1]) as server:
            book = server.server.config.http.upload_book  # type: ignore[union-attr]
            if baseline:
                book.limits = replace(book.limits, max_uploads=10**6, max_uploads_per_client=10**6)
            wait_ready(httpx.Client(base_url=server.url))
            attack = SlowSignIns(server.port, n)
            seen = everyone_else(server.url, seconds)
            seen["attacker_answers"] = attack.stop()
            out[mode] = seen
    guard.SMALL_BODY_TIMEOUT_S = SMALL_BODY_TIMEOUT_S
    out["passed"] = out["limits on"]["ok"]
    return out


def token_guessing(work: Path, guesses: int) -> dict[str, Any]:
    with admin(work / "tokens") as server:
        wait_ready(httpx.Client(base_url=server.url))
        guesser = httpx.Client(base_url=server.url, transport=httpx.HTTPTransport(local_address="127.0.0.1"))
        holder = httpx.Client(base_url=server.url, transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        statuses, holder_statuses = Counter[int](), Counter[int]()
        t0 = time.monotonic()
        for i in range(guesses):
            statuses[guesser.get("/v1/models", headers={"Authorization": f"Bearer guess-{i:012d}"}).status_code] += 1
            if i % 10 == 0:
                holder_statuses[holder.get("/v1/models", headers=ADMIN).status_code] += 1
        took = time.monotonic() - t0
        judged = statuses[401]
    return {"check": f"{guesses} wrong bearer tokens from one address, the right one from another every 10th",
            "guesser": dict(statuses), "guesses_judged": judged, "seconds": round(took, 1),
            "holder": dict(holder_statuses),
            # 5 free, then one a wait of 1, 2, 4... seconds
            "passed": judged <= FREE_FAILURES + 1 + math.log2(1 + took) and set(holder_statuses) == {200}}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--sockets", type=int, default=64, help="slow sign-in bodies held (the admin's request slots)")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--guesses", type=int, default=300)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="graft-admin-attacks-"))
    rows = [slow_bodies(work, args.sockets, args.seconds), token_guessing(work, args.guesses)]
    peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    machine = f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"
    result = {"machine": machine, "peak_rss_mb": peak, "rows": rows}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
