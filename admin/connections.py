"""The admin's connections before the front door: a deadline for a request's headers, and idle connections that
can never keep a request out.

uvicorn counts every open connection toward ``limit_concurrency`` and has no header timeout (its
``timeout_keep_alive`` starts only after a response and is cancelled by any byte received; the header timeout
asked for in uvicorn#157 was never added). So 64 sockets that never finish their headers made every later
request a 503, probes included, for as long as they were held. This module plugs into uvicorn's documented
``http=`` protocol class (its own h11 protocol, subclassed; no server of our own) and adds what uvicorn lacks:

* a **header deadline**: from the moment a connection opens, or the moment its last response ended, the next
  request's headers must arrive within ``header_timeout_s`` (a byte now and then does not extend it); otherwise
  the connection is closed (with a 408 when part of a request had come);
* **idle connections give way**: a connection waiting for headers is *idle*. One client (one peer address) keeps
  at most ``max_idle_per_client`` idle connections (its oldest goes first), and when the server is at its
  connection limit a new connection closes the oldest idle connection of the client holding the most. A request
  that has its headers is never closed here: the guard's body deadline and uvicorn's 503 still apply to it.

The event loop is single-threaded: the book below needs no lock.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_ANSWERING = (h11.SEND_RESPONSE, h11.SEND_BODY)  # h11 states of a server that owes a response: a request is in


@dataclass(frozen=True)
class Limits:
    header_timeout_s: float  # a request's headers must be complete within this
    max_idle_per_client: int  # idle connections one peer address may hold
    max_connections: int  # uvicorn's limit_concurrency: idle ones give way before it is reached


class IdleBook:
    """Idle connections by client, oldest first."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.idle: dict[str, OrderedDict[GuardedH11Protocol, None]] = {}

    def add(self, conn: GuardedH11Protocol) -> None:
        self.idle.setdefault(conn.peer, OrderedDict())[conn] = None

    def remove(self, conn: GuardedH11Protocol) -> None:
        mine = self.idle.get(conn.peer)
        if mine is not None:
            mine.pop(conn, None)
            if not mine:
                del self.idle[conn.peer]

    def make_room(self, newcomer: GuardedH11Protocol, open_connections: set[Any]) -> None:
        """Close idle connections so that ``newcomer``'s client stays within its share and a request arriving on
        ``newcomer`` finds the server under its connection limit (uvicorn's 503 counts ``open_connections``)."""
        mine = self.idle.get(newcomer.peer, OrderedDict())
        while len(mine) > self.limits.max_idle_per_client and self._evict(newcomer, newcomer.peer, "too many idle"):
            pass
        while len(open_connections) >= self.limits.max_connections:
            busiest = sorted(self.idle, key=lambda peer: len(self.idle[peer]), reverse=True)
            if not any(self._evict(newcomer, peer, "server at its connection limit") for peer in busiest):
                return  # every other connection is answering a request: uvicorn's 503 is the right answer

    def _evict(self, newcomer: GuardedH11Protocol, peer: str, why: str) -> bool:
        """Close ``peer``'s oldest idle connection other than ``newcomer``; False when it has none."""
        for conn in self.idle.get(peer, ()):
            if conn is not newcomer:
                conn.close_idle(why)
                return True
        return False


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and idle connections that give way (module docstring)."""

    book: ClassVar[IdleBook]  # one per server: :func:`protocol_class` binds it

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.peer = "?"
        self._deadline: asyncio.TimerHandle | None = None
        self._partial = False  # bytes of a request came while idle

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.peer = self.client[0] if self.client else "?"
        self._idle()
        self.book.make_room(self, self.connections)

    def connection_lost(self, exc: Exception | None) -> None:
        self._busy()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._partial = True
        super().data_received(data)
        if self.conn.our_state in _ANSWERING:
            self._busy()  # the headers are in: the guard's body deadline and the app take over

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request at once
        if not self.transport.is_closing() and self.conn.our_state not in _ANSWERING:
            self._idle()

    def close_idle(self, why: str) -> None:
        self._busy()
        if self._partial:
            self.transport.write(_TIMEOUT_408)  # outside h11: no request was parsed to answer
        self.logger.info("closing an idle connection from %s: %s", self.peer, why)
        self.transport.close()
        self.connections.discard(self)  # at once: the newcomer that made room must not see it counted

    def _idle(self) -> None:
        self._partial = False
        self.book.add(self)
        if self._deadline is not None:
            self._deadline.cancel()
        timeout = self.book.limits.header_timeout_s
        self._deadline = self.loop.call_later(timeout, self.close_idle, f"no request headers within {timeout:g}s")

    def _busy(self) -> None:
        self.book.remove(self)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def protocol_class(limits: Limits) -> type[GuardedH11Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with its own book (one per server)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"book": IdleBook(limits)})
