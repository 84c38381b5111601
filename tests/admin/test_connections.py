"""Connections that never finish a request, against a real uvicorn server on 127.0.0.1 (admin/connections.py):
probes and admins keep their answers within a second, and a request's headers have a deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from admin.connections import GRACE_S
from admin.server import AdminServer
from tests.admin.test_api import settings
from tests.support.auth import ADMIN
from tests.support.fakes import FakeRollout, fake_evaluate, placeholder_export
from tests.support.waiting import wait_ready

PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"  # the headers never end


@contextmanager
def serving(tmp_path: Path, port: int, **overrides: Any) -> Iterator[AdminServer]:
    st = settings(tmp_path, admin_port=port, **overrides)
    extra = {"evaluate": fake_evaluate, "export": placeholder_export}
    with AdminServer(st, rollout=FakeRollout(), app_kwargs=extra) as server, httpx.Client(base_url=server.url) as c:
        wait_ready(c)
        yield server


def idle_sockets(stack: ExitStack, port: int, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
        s.sendall(PARTIAL)
        out.append(s)
    return out


def probe_everything(url: str) -> dict[str, tuple[int, float]]:
    """Each route on a new connection (as a kubelet probe or a browser would): its status and seconds."""
    out = {}
    for path, headers in (("/healthz", {}), ("/readyz", {}), ("/v1/models", ADMIN), ("/console/login", {})):
        t0 = time.monotonic()
        r = httpx.get(url + path, headers=headers, timeout=5)
        out[path] = (r.status_code, time.monotonic() - t0)
    return out


def test_idle_sockets_never_keep_probes_and_admins_out(tmp_path: Path, free_port: int) -> None:
    # A long header deadline: what keeps the server answering here is that idle connections give way.
    with serving(tmp_path, free_port, header_timeout_s=120) as server, ExitStack() as stack:
        idle_sockets(stack, free_port, 64)
        for path, (status, took) in probe_everything(server.url).items():
            assert status == 200 and took < 1.0, (path, status, took)
        idle_sockets(stack, free_port, 1000)
        for _ in range(3):
            for path, (status, took) in probe_everything(server.url).items():
                assert status == 200 and took < 1.0, (path, status, took)
        book = server.server.book
        assert book.count <= book.limits.max_idle <= 16 * server.settings.max_connections, "a bounded number"


def test_probes_answer_while_sockets_are_being_opened(tmp_path: Path, free_port: int) -> None:
    """The probes' own connections come from the same address as a burst of idle sockets, in the middle of it."""
    import threading

    with serving(tmp_path, free_port, header_timeout_s=120) as server, ExitStack() as stack:
        done = threading.Event()

        def attack() -> None:
            idle_sockets(stack, free_port, 1500)
            done.set()

        attacker = threading.Thread(target=attack)
        attacker.start()
        rounds = 0
        while not done.is_set() or rounds < 3:
            for path, (status, took) in probe_everything(server.url).items():
                assert status == 200 and took < 1.0, (path, status, took, rounds)
            rounds += 1
        attacker.join()


def test_one_client_keeps_a_bounded_number_of_idle_connections(tmp_path: Path, free_port: int) -> None:
    with serving(tmp_path, free_port, header_timeout_s=120, max_idle_per_client=4) as server, ExitStack() as stack:
        socks = idle_sockets(stack, free_port, 10)
        time.sleep(GRACE_S + 0.2)  # they have had their chance to send a request
        socks += idle_sockets(stack, free_port, 1)
        time.sleep(0.3)
        closed = []
        for s in socks:
            s.settimeout(0.01)
            try:
                s.recv(1024)  # a 408, or the end of the stream
                closed.append(True)
            except ConnectionResetError:  # closed before it read what was sent
                closed.append(True)
            except TimeoutError:
                closed.append(False)
        assert closed == [True] * 7 + [False] * 4, "the oldest go first; four stay"
        assert httpx.get(server.url + "/healthz").status_code == 200


def _closed_after(s: socket.socket, trickle: bytes, limit: float) -> tuple[bytes, float]:
    """Send ``trickle`` a byte every 0.2 s until the server answers or closes; what it sent and when."""
    t0 = time.monotonic()
    got = b""
    for i in range(int(limit / 0.2)):
        s.settimeout(0.2)
        try:
            chunk = s.recv(1024)
            got += chunk
            if not chunk or got.endswith(b"\r\n\r\n"):
                break
        except TimeoutError:
            pass
        if trickle:
            try:
                s.sendall(trickle[i % len(trickle) : i % len(trickle) + 1])
            except OSError:
                break
    return got, time.monotonic() - t0


def test_a_request_must_finish_its_headers_in_time(tmp_path: Path, free_port: int) -> None:
    with serving(tmp_path, free_port, header_timeout_s=1.0) as server:
        with socket.create_connection(("127.0.0.1", free_port)) as silent:
            got, took = _closed_after(silent, b"", 6)
            assert got == b"" and took < 3, "nothing sent: closed at the deadline"
        with socket.create_connection(("127.0.0.1", free_port)) as slow:
            got, took = _closed_after(slow, b"GET /healthz HTTP/1.1\r\nX-A: " + b"a" * 100, 6)
            assert got.startswith(b"HTTP/1.1 408") and took < 3, (got, took)
        with socket.create_connection(("127.0.0.1", free_port)) as reused:
            reused.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            first = b""
            while not first.endswith(b'"ok"}'):
                first += reused.recv(4096)
            assert first.startswith(b"HTTP/1.1 200"), first
            got, took = _closed_after(reused, b"GET /healthz HTTP/1.1\r\nX-A: " + b"a" * 100, 6)
            assert got.startswith(b"HTTP/1.1 408") and took < 3, "the deadline starts again after a response"
        with socket.create_connection(("127.0.0.1", free_port)) as patient:
            time.sleep(0.5)  # within the deadline: an ordinary client
            patient.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert patient.recv(4096).startswith(b"HTTP/1.1 200")
        assert httpx.get(server.url + "/healthz").status_code == 200
