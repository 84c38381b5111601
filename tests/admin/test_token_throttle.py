"""Guessing the admin API's bearer token, over real HTTP to a real uvicorn server (admin/api/guard.py and
admin/api/sessions.py ``SignInThrottle``): wrong tokens back off per address with a 429, the right token's holder
at another address never waits, and the table of addresses stays bounded.

Other addresses are other loopback addresses (127.0.0.2, ...): Linux answers all of 127/8 on ``lo``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from admin.api import sessions
from admin.api.sessions import FREE_FAILURES, SignInThrottle
from admin.server import AdminServer
from tests.admin.test_connections import serving
from tests.support.auth import ADMIN, SAMPLER
from tests.support.waiting import error_of

WRONG = {"Authorization": "Bearer not-the-token-0123456789"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server(tmp_path: Path, free_port: int) -> Iterator[tuple[AdminServer, Clock]]:
    clock = Clock()
    with serving(tmp_path, free_port) as srv:
        srv.app.state.sign_in_throttle = SignInThrottle(clock=clock)  # the service's table, on a clock we move
        yield srv, clock


def client_from(url: str, address: str) -> httpx.Client:
    return httpx.Client(base_url=url, transport=httpx.HTTPTransport(local_address=address), timeout=5)


def test_wrong_tokens_back_off_per_address_and_the_holder_elsewhere_never_waits(
    server: tuple[AdminServer, Clock],
) -> None:
    srv, clock = server
    with client_from(srv.url, "127.0.0.1") as guesser, client_from(srv.url, "127.0.0.2") as holder:
        for _ in range(FREE_FAILURES):
            assert guesser.get("/v1/models", headers=WRONG).status_code == 401
        refused = guesser.get("/v1/models", headers=WRONG)
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "1"
        assert error_of(refused)["type"] == "TooManyAttemptsError"
        assert "try again in 1 s" in error_of(refused)["message"]
        # Not judged during the wait, not even the right token: otherwise a 200 among the 429s would tell a guesser.
        assert guesser.get("/v1/models", headers=ADMIN).status_code == 429
        # The holder at another address is never delayed, however long the guessing goes on.
        for _ in range(20):
            assert holder.get("/v1/models", headers=ADMIN).status_code == 200
        # A request without a token guesses nothing: a plain 401, whatever the wait.
        assert guesser.get("/v1/models").status_code == 401

        clock.now += 1.01
        assert guesser.get("/v1/models", headers=WRONG).status_code == 401, "judged once the wait is over"
        waits = []
        for _ in range(8):
            r = guesser.get("/v1/samples", headers=WRONG)
            assert r.status_code == 429
            waits.append(int(r.headers["retry-after"]))
            clock.now += waits[-1] + 0.01
            assert guesser.get("/v1/samples", headers=WRONG).status_code == 401
        assert waits == [2, 4, 8, 16, 32, 60, 60, 60], "doubling, up to a minute"

        # The right token from the guesser's address, once its wait is over, is answered, and clears nothing.
        clock.now += 61
        assert guesser.get("/v1/models", headers=ADMIN).status_code == 200
        assert guesser.get("/v1/models", headers=WRONG).status_code == 401
        assert guesser.get("/v1/models", headers=WRONG).status_code == 429, "still backing off after a success"


def test_a_right_token_on_the_wrong_route_and_a_samples_token_are_not_guesses(
    server: tuple[AdminServer, Clock],
) -> None:
    srv, _ = server
    with client_from(srv.url, "127.0.0.3") as c:
        for _ in range(3 * FREE_FAILURES):
            assert c.get("/v1/models", headers=SAMPLER).status_code == 403  # a known token, not allowed here
            assert c.get("/v1/labels", headers=SAMPLER).status_code == 200
        assert c.get("/v1/models", headers=ADMIN).status_code == 200


def test_the_api_and_the_console_sign_in_share_one_wait(server: tuple[AdminServer, Clock]) -> None:
    srv, _ = server
    with client_from(srv.url, "127.0.0.4") as c:
        for _ in range(FREE_FAILURES):
            assert c.get("/v1/models", headers=WRONG).status_code == 401
        page = c.get("/console/login")
        assert page.status_code == 200
        r = c.post("/console/login", data={"token": "another-guess"})
        assert r.status_code == 429, "switching to the sign-in form does not start afresh"


def test_ipv6_clients_are_counted_by_their_64(monkeypatch: pytest.MonkeyPatch) -> None:
    throttle = SignInThrottle(clock=lambda: 0.0)
    for i in range(FREE_FAILURES):
        throttle.failed(f"2001:db8:1:2::{i + 1:x}")  # a fresh address each time, from one /64
    assert throttle.wait_s("2001:db8:1:2:ffff::9") > 0
    assert throttle.wait_s("2001:db8:1:3::1") == 0, "the next /64 is someone else"
    assert sessions.client_key("::ffff:10.0.0.7") == "10.0.0.7"


def test_the_table_of_addresses_is_bounded(server: tuple[AdminServer, Clock], monkeypatch: pytest.MonkeyPatch) -> None:
    srv, _ = server
    monkeypatch.setattr(sessions, "MAX_TRACKED", 8)
    throttle: SignInThrottle = srv.app.state.sign_in_throttle
    for i in range(12):
        with client_from(srv.url, f"127.0.1.{i + 1}") as c:
            assert c.get("/v1/models", headers=WRONG).status_code == 401
    assert len(throttle) == 8, "the least recently failed addresses are forgotten first"
    for _ in range(FREE_FAILURES):
        throttle.failed("127.0.1.1")  # forgotten above: starts afresh, and is remembered again
    assert throttle.wait_s("127.0.1.1") > 0 and len(throttle) == 8
