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
* **idle connections are not requests**: a connection waiting for headers is *idle*, and only connections with a
  request in progress count toward ``limit_concurrency`` (uvicorn's own 503 past it), as uvicorn already does for
  a connection it hands to a WebSocket protocol. Idle connections are bounded on their own: one client (one peer
  address) keeps at most ``max_idle_per_client`` that have had the time to send a request, and past ``max_idle``
  in all, the oldest idle connection of the client holding the most is closed. A request that has its headers is
  never closed here: the guard's body deadline applies to it.
* **slow bodies cost their sender**: a request whose headers are in but whose body is still arriving (an
  *upload*) holds a request slot, and a body trickled a byte at a time holds it until the guard's body deadline.
  Uploads are bounded on their own, below ``limit_concurrency``: one client keeps at most
  ``max_uploads_per_client`` (its next one is refused at once with a 429), and past ``max_uploads`` in all the
  oldest upload of the client holding the most is cut off (a 503), so that requests without a body (probes,
  pages, the API's reads) and bodies that arrive promptly always find a free slot.

The event loop is single-threaded: the book below needs no lock.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

_TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_ANSWERING = (h11.SEND_RESPONSE, h11.SEND_BODY)  # h11 states of a server that owes a response: a request is in
# A connection idle this long has had its chance to send a request (a real client sends it within milliseconds).
GRACE_S = 0.5
MAX_UPLOADS_PER_CLIENT = 8  # a person's browser tabs and a script's parallel pushes; an attacker's sockets are refused


@dataclass(frozen=True)
class Limits:
    header_timeout_s: float  # a request's headers must be complete within this
    max_idle_per_client: int  # idle connections one peer address may hold (once they had GRACE_S)
    max_idle: int  # idle connections in all (sockets and memory stay bounded)
    max_uploads_per_client: int = MAX_UPLOADS_PER_CLIENT  # requests of one peer address whose body is still arriving
    max_uploads: int = 32  # such requests in all: keep it under limit_concurrency, the rest is for everyone else


def _refusal(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP response in the API's error shape, written outside h11 (the request is abandoned)."""
    kind = "TooManyUploadsError" if status == 429 else "ServiceBusyError"
    body = json.dumps({"error": {"type": kind, "status": status, "message": message}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "retry-after: 5\r\nconnection: close\r\n\r\n")  # fmt: skip
    return head.encode() + body


class UploadBook:
    """Requests whose body is still arriving, by client, oldest first."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.uploads: dict[str, OrderedDict[GuardedH11Protocol, None]] = {}
        self.count = 0

    def __contains__(self, conn: GuardedH11Protocol) -> bool:
        return conn in self.uploads.get(conn.peer, ())

    def add(self, conn: GuardedH11Protocol) -> None:
        """Count ``conn``'s upload, refusing it if its client holds too many, and cutting the busiest client's
        oldest off if there are too many in all."""
        mine = self.uploads.setdefault(conn.peer, OrderedDict())
        mine[conn] = None
        self.count += 1
        if len(mine) > self.limits.max_uploads_per_client:
            conn.refuse_upload(_refusal(429, "Too Many Requests", (
                f"this address already has {self.limits.max_uploads_per_client} request bodies arriving; "
                "finish those (or send them faster) and try again")))  # fmt: skip
            return
        while self.count > self.limits.max_uploads:
            busiest = max(self.uploads.values(), key=len)
            victim = next(iter(busiest))
            victim.refuse_upload(_refusal(503, "Service Unavailable", (
                "too many request bodies are arriving at once and this one came from the client sending the most; "
                "try again")))  # fmt: skip

    def remove(self, conn: GuardedH11Protocol) -> None:
        mine = self.uploads.get(conn.peer)
        if mine is not None and conn in mine:
            del mine[conn]
            self.count -= 1
            if not mine:
                del self.uploads[conn.peer]


class IdleBook:
    """Idle connections by client, oldest first."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.idle: dict[str, OrderedDict[GuardedH11Protocol, None]] = {}
        self.count = 0

    def add(self, conn: GuardedH11Protocol) -> None:
        mine = self.idle.setdefault(conn.peer, OrderedDict())
        if conn not in mine:
            mine[conn] = None
            self.count += 1

    def remove(self, conn: GuardedH11Protocol) -> None:
        mine = self.idle.get(conn.peer)
        if mine is not None and conn in mine:
            del mine[conn]
            self.count -= 1
            if not mine:
                del self.idle[conn.peer]

    def make_room(self, newcomer: GuardedH11Protocol) -> None:
        """Keep ``newcomer``'s client to its share of idle connections, and all of them under ``max_idle``.

        Only connections idle for :data:`GRACE_S` count against a client's share: one that has just opened has not
        had the time to send its request yet (a probe among a burst of sockets from the same address)."""
        now = newcomer.loop.time()
        mine = self.idle.get(newcomer.peer, OrderedDict())
        while len(mine) > self.limits.max_idle_per_client:
            stale = next((c for c in mine if c is not newcomer and now - c.idle_since >= GRACE_S), None)
            if stale is None:
                break
            stale.close_idle("the client holds too many idle connections")
        while self.count > self.limits.max_idle:
            victim = self._victim(newcomer, now)
            if victim is None:
                return
            victim.close_idle("too many idle connections")

    def _victim(self, newcomer: GuardedH11Protocol, now: float) -> GuardedH11Protocol | None:
        """The oldest idle connection of the client holding the most that has had :data:`GRACE_S` to send its
        request; else (a burst) the busiest client's oldest."""
        fallback = None
        for peer in sorted(self.idle, key=lambda p: len(self.idle[p]), reverse=True):
            oldest = next((c for c in self.idle[peer] if c is not newcomer), None)
            if oldest is not None and now - oldest.idle_since >= GRACE_S:
                return oldest
            fallback = fallback or oldest
        return fallback

    def close_all(self) -> None:
        for conn in [c for mine in self.idle.values() for c in mine]:
            conn.close_idle("the server is stopping")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline, counted as a connection only while it has a request, and
    bounded while its request's body is arriving."""

    book: ClassVar[IdleBook]  # one per server: :func:`protocol_class` binds them
    upload_book: ClassVar[UploadBook]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.peer = "?"
        self._deadline: asyncio.TimerHandle | None = None
        self._partial = False  # bytes of a request came while idle
        self.idle_since = 0.0  # loop time

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.peer = self.client[0] if self.client else "?"
        self._idle()
        self.book.make_room(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._busy()
        self.upload_book.remove(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._partial = True
        super().data_received(data)  # uvicorn's 503 check counts the connections with a request, not this one
        if self.conn.our_state in _ANSWERING and not self.transport.is_closing():
            self._busy()  # the headers are in: the guard's body deadline and the app take over
            self.connections.add(self)
        self._track_upload()

    def on_response_complete(self) -> None:
        self.upload_book.remove(self)  # answered: whatever of the body is left is no longer waited for
        super().on_response_complete()  # may start a pipelined request at once
        if not self.transport.is_closing() and self.conn.our_state not in _ANSWERING:
            self._idle()
        self._track_upload()

    def _track_upload(self) -> None:
        """In the upload book while the request's body is arriving and nothing has been answered yet."""
        uploading = (self.conn.our_state is h11.SEND_RESPONSE and self.conn.their_state is h11.SEND_BODY
                     and not self.transport.is_closing())  # fmt: skip
        if uploading and self not in self.upload_book:
            self.upload_book.add(self)
        elif not uploading:
            self.upload_book.remove(self)

    def refuse_upload(self, response: bytes) -> None:
        """Abandon a request whose body is still arriving: answer ``response`` and close (the app sees a
        disconnect)."""
        self.upload_book.remove(self)
        self.logger.debug("refused a request body from %s: %s", self.peer, response.split(b"\r\n", 1)[0].decode())
        self.transport.write(response)
        self.transport.close()

    def close_idle(self, why: str) -> None:
        self._busy()
        if self._partial:
            self.transport.write(_TIMEOUT_408)  # outside h11: no request was parsed to answer
        self.logger.debug("closing an idle connection from %s: %s", self.peer, why)
        self.transport.close()

    def _idle(self) -> None:
        self.connections.discard(self)
        self._partial = False
        self.idle_since = self.loop.time()
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


def idle_limit(max_connections: int) -> int:
    """How many idle connections to hold: plenty (16 per request slot, so a burst of sockets rarely closes a
    client's connection before it is read), within a quarter of the process's file descriptors (past them the
    event loop stops accepting for a second)."""
    try:
        import resource

        fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, ValueError, OSError):
        fds = 1024
    fds = fds if fds > 0 else 2**20  # RLIM_INFINITY
    return max(max_connections, min(16 * max_connections, fds // 4))


def protocol_class(limits: Limits) -> type[GuardedH11Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with its own books (one per server)."""
    books = {"book": IdleBook(limits), "upload_book": UploadBook(limits)}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), books)


class GuardedServer(uvicorn.Server):
    """uvicorn's server; at shutdown it also closes the idle connections, which it does not count as its own."""

    def __init__(self, config: uvicorn.Config, book: IdleBook):
        super().__init__(config)
        self.book = book

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.book.close_all()
        await super().shutdown(sockets)
