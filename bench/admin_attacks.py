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
import os
import resource
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from admin.api import guard
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


class SlowSignIns:
    """``n`` sign-in requests from 127.0.0.1 whose 1,000-byte body comes a byte a second, each reopened as soon as
    the server answers or closes it (an attacker keeps the pressure on)."""

    def __init__(self, port: int, n: int):
        self.port, self.n = port, n
        self.answers = Counter[str]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _open(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.sendall(LOGIN_HEAD)
        s.setblocking(False)
        return s

    def _run(self) -> None:
        socks = [self._open() for _ in range(self.n)]
        while not self._stop.wait(1.0):
            for i, s in enumerate(socks):
                try:
                    got = s.recv(64)
                    self.answers[got.split(b" ", 2)[1].decode() if got else "closed"] += 1
                except BlockingIOError:  # nothing from the server: send the next byte
                    try:
                        s.sendall(b"a")
                        continue
                    except OSError:
                        self.answers["closed"] += 1
                except OSError:
                    self.answers["closed"] += 1
                s.close()
                socks[i] = self._open()
        for s in socks:
            s.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def everyone_else(url: str, seconds: float) -> dict[str, Any]:
    """Probes, an admin and another user's sign-in (from 127.0.0.9), each on a new connection, for ``seconds``."""
    statuses, latencies = Counter[str](), []
    other = httpx.HTTPTransport(local_address="127.0.0.9")
    asks = [("GET", "/healthz", {}), ("GET", "/readyz", {}), ("GET", "/v1/models", ADMIN),
            ("POST", "/console/login", {})]  # fmt: skip
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        for method, path, headers in asks:
            t0 = time.monotonic()
            try:
                with httpx.Client(base_url=url, transport=other, timeout=5) as c:
                    data = {"token": "a-wrong-token"} if method == "POST" else None
                    statuses[str(c.request(method, path, headers=headers, data=data).status_code)] += 1
            except httpx.HTTPError as e:
                statuses[type(e).__name__] += 1
            latencies.append(time.monotonic() - t0)
        time.sleep(0.05)
    expected = {"200", "401"}  # the other user's sign-in is judged: a wrong token there is a 401 page
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
            time.sleep(1.0)
            seen = everyone_else(server.url, seconds)
            attack.stop()
            seen["attacker_answers"] = dict(attack.answers)
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
            "passed": judged <= 6 and set(holder_statuses) == {200}}  # fmt: skip


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
