"""Console sessions and sign-in under loops: over real HTTP from several loopback addresses, and the rules on a
fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from admin.api.sessions import FREE_FAILURES, MAX_BACKOFF_S, MAX_PER_CLIENT, MAX_PER_ROLE, SessionStore, SignInThrottle
from admin.server import AdminServer
from tests.admin.test_api import settings
from tests.support.auth import ADMIN_TOKEN, SAMPLES_TOKEN
from tests.support.fakes import FakeRollout, fake_evaluate, placeholder_export
from tests.support.waiting import wait_ready


@pytest.fixture
def server(tmp_path: Path, free_port: int) -> Iterator[AdminServer]:
    extra = {"evaluate": fake_evaluate, "export": placeholder_export}
    with AdminServer(settings(tmp_path, admin_port=free_port), rollout=FakeRollout(), app_kwargs=extra) as srv:
        with httpx.Client(base_url=srv.url) as c:
            wait_ready(c)
        yield srv


def client_from(srv: AdminServer, address: str) -> httpx.Client:
    """A client whose connections come from ``address`` (all of 127.0.0.0/8 is this machine)."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=srv.url, transport=transport, follow_redirects=False)


def sign_in(c: httpx.Client, token: str) -> httpx.Response:
    return c.post("/console/login", data={"token": token})


def test_a_sign_in_loop_signs_no_admin_out(server: AdminServer) -> None:
    admin = client_from(server, "127.0.0.2")
    assert sign_in(admin, ADMIN_TOKEN).status_code == 303
    loop = client_from(server, "127.0.0.1")
    for _ in range(1000):
        r = sign_in(loop, SAMPLES_TOKEN)
        assert r.status_code == 303
        loop.cookies.clear()
    assert admin.get("/console/models").status_code == 200, "the admin's session outlived the loop"
    assert len(server.app.state.sessions) <= MAX_PER_CLIENT + 1


def test_wrong_tokens_back_off(server: AdminServer) -> None:
    guesser = client_from(server, "127.0.0.3")
    statuses = [sign_in(guesser, f"guess-{i:04d}-0123456789abcdef").status_code for i in range(300)]
    assert statuses[:FREE_FAILURES] == [401] * FREE_FAILURES
    assert statuses.count(401) <= FREE_FAILURES + 3 and statuses.count(429) >= 290, statuses.count(401)
    r = sign_in(guesser, ADMIN_TOKEN)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1, "not judged while it waits, right or not"
    assert "try again in" in r.text
    assert sign_in(client_from(server, "127.0.0.4"), ADMIN_TOKEN).status_code == 303, "another address is not held"


def test_sessions_go_expired_first_then_per_client_then_per_role() -> None:
    now = [1000.0]
    store = SessionStore(ttl_s=60, clock=lambda: now[0])
    admin = store.create("admin", "10.0.0.1")
    old = [store.create("samples", "10.0.0.2") for _ in range(3)]
    now[0] += 61  # those four expire
    fresh_admin = store.create("admin", "10.0.0.1")
    assert store.get(admin.id) is None and all(store.get(s.id) is None for s in old) and len(store) == 1
    mine = [store.create("samples", "10.0.0.9") for _ in range(MAX_PER_CLIENT + 5)]
    assert [store.get(s.id) is not None for s in mine] == [False] * 5 + [True] * MAX_PER_CLIENT
    for i in range(MAX_PER_ROLE + 50):  # a loop over many addresses
        store.create("samples", f"10.1.{i // 250}.{i % 250}")
    assert store.get(fresh_admin.id) is not None, "another role's sessions are never the ones to go"
    assert len(store) == MAX_PER_ROLE + 1


def test_the_backoff_doubles_up_to_its_cap_and_is_forgotten() -> None:
    now = [0.0]
    throttle = SignInThrottle(clock=lambda: now[0])
    for _ in range(FREE_FAILURES):
        assert throttle.wait_s("a") == 0
        throttle.failed("a")
    waits = []
    for _ in range(10):
        waits.append(throttle.wait_s("a"))
        now[0] += waits[-1]
        throttle.failed("a")
    assert waits == [1, 2, 4, 8, 16, 32, MAX_BACKOFF_S, MAX_BACKOFF_S, MAX_BACKOFF_S, MAX_BACKOFF_S]
    assert throttle.wait_s("b") == 0, "per address"
    now[0] += 16 * 60
    throttle.failed("a")
    assert throttle.wait_s("a") == 0, "a quarter of an hour without a wrong token: afresh"
    throttle.succeeded("a")
    assert throttle.wait_s("a") == 0
