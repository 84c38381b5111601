"""Request bodies sent slowly, over real sockets to a real uvicorn server on 127.0.0.1 (admin/connections.py upload
book, admin/api/guard.py body deadlines): the sender pays (refused, or cut off), probes and other users do not.

The console's sign-in form is the one body anyone may send without a token (every other route checks the token
before reading a body), so the attack is slow sign-in bodies. Other clients are other loopback addresses."""

from __future__ import annotations

import socket
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from admin.connections import MAX_UPLOADS_PER_CLIENT
from admin.server import AdminServer
from tests.admin.test_connections import probe_everything, serving

LOGIN_HEAD = (b"POST /console/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
              b"Content-Length: 1000\r\n\r\ntoken=")  # fmt: skip


def slow_logins(stack: ExitStack, port: int, n: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """``n`` sign-in requests whose headers are in and whose body has only begun."""
    out = []
    for _ in range(n):
        s = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)))
        s.sendall(LOGIN_HEAD)
        out.append(s)
    return out


def answer(s: socket.socket, wait: float) -> bytes:
    """What the server sent within ``wait`` seconds (b"" if nothing, or closed without a word)."""
    s.settimeout(wait)
    try:
        return s.recv(4096)
    except (TimeoutError, ConnectionResetError):
        return b""


def sign_in(url: str, source: str) -> int:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=url, transport=transport, timeout=5) as c:
        return c.post("/console/login", data={"token": "a-wrong-token"}).status_code


# Answered, not made to wait for the attacker's bodies (held up to the 60 s body deadline here). Not a speed target
# (bench/admin_attacks.py measures latencies): the bound leaves room for a machine shared with other work.
PROMPT_S = 5.0


def assert_everyone_else_answered(server: AdminServer) -> None:
    for path, (status, took) in probe_everything(server.url).items():
        assert status == 200 and took < PROMPT_S, (path, status, took)
    t0 = time.monotonic()
    assert sign_in(server.url, "127.0.0.9") == 401, "another user's sign-in is judged (a wrong token here)"
    assert time.monotonic() - t0 < PROMPT_S


def test_one_client_s_slow_bodies_are_refused_past_its_share(tmp_path: Path, free_port: int) -> None:
    # A long body deadline: what keeps the server answering is the per-client share, not the deadline.
    with serving(tmp_path, free_port, body_timeout_s=60) as server, ExitStack() as stack:
        socks = slow_logins(stack, free_port, 64)  # as many as there are request slots
        answers = [answer(s, 0.5 if i >= MAX_UPLOADS_PER_CLIENT else 0.05) for i, s in enumerate(socks)]
        held = answers[:MAX_UPLOADS_PER_CLIENT]
        refused = answers[MAX_UPLOADS_PER_CLIENT:]
        assert held == [b""] * MAX_UPLOADS_PER_CLIENT, "the first few are ordinary slow uploads"
        assert all(a.startswith(b"HTTP/1.1 429 ") and b"TooManyUploadsError" in a for a in refused), refused[:2]
        assert_everyone_else_answered(server)
        assert server.server.config.http.upload_book.count == MAX_UPLOADS_PER_CLIENT  # type: ignore[union-attr]


def test_slow_bodies_from_many_addresses_leave_room_for_everyone_else(tmp_path: Path, free_port: int) -> None:
    with serving(tmp_path, free_port, body_timeout_s=60, max_connections=16) as server, ExitStack() as stack:
        # 8 request slots for bodies (half of 16), at most 8 per client: 4 addresses, 3 uploads each.
        socks = [s for i in range(4) for s in slow_logins(stack, free_port, 3, f"127.0.4.{i + 1}")]
        answers = [b""] * len(socks)
        t0 = time.monotonic()
        while sum(map(bool, answers)) < 4 and time.monotonic() - t0 < PROMPT_S:  # the server may still be at it
            answers = [a or answer(s, 0.02) for a, s in zip(answers, socks, strict=True)]
        time.sleep(0.2)
        answers = [a or answer(s, 0.02) for a, s in zip(answers, socks, strict=True)]
        assert sum(a.startswith(b"HTTP/1.1 503 ") for a in answers) == 4 and sum(map(bool, answers)) == 4, answers
        book = server.server.config.http.upload_book  # type: ignore[union-attr]
        assert book.count == 8 and max(len(m) for m in book.uploads.values()) == 2, "the busiest clients gave way"
        assert_everyone_else_answered(server)


def test_a_small_body_has_seconds_not_the_whole_body_timeout(tmp_path: Path, free_port: int) -> None:
    chunked = (b"POST /console/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n400\r\ntoken=")  # fmt: skip
    with serving(tmp_path, free_port, body_timeout_s=60) as server, ExitStack() as stack:
        (declared,) = slow_logins(stack, free_port, 1)
        undeclared = stack.enter_context(socket.create_connection(("127.0.0.1", free_port), timeout=5))
        undeclared.sendall(chunked)  # no length said: the route's limit (64 KiB) makes it small
        t0 = time.monotonic()
        got: dict[socket.socket, tuple[bytes, float]] = {}
        while len(got) < 2 and time.monotonic() - t0 < 10:
            for s in (declared, undeclared):
                if s not in got:
                    s.sendall(b"a")  # a byte every 0.25 s: 1,000 bytes would take four minutes
                    if answer_ := answer(s, 0.125):
                        got[s] = (answer_, time.monotonic() - t0)
        for s in (declared, undeclared):
            head, took = got.get(s, (b"", 99.0))
            assert head.startswith(b"HTTP/1.1 408 ") and 4.5 < took < 7, (head[:40], took)
        assert server.server.config.http.upload_book.count == 0  # type: ignore[union-attr]
