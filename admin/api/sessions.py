"""Console sessions: a random id in an HttpOnly cookie, the role and a CSRF token kept server-side; and how often
one address may try a token at the sign-in form.

Kept in memory: a restart signs everyone out, which is the safe direction. The store is bounded so that signing
in in a loop cannot grow it without end, and so that such a loop costs nobody else their session: expired
sessions go first, then one client's oldest session of that role past :data:`MAX_PER_CLIENT`, then the role's
oldest past :data:`MAX_PER_ROLE`. A loop with the samples token never signs an admin out.

Wrong tokens back off (:class:`SignInThrottle`, one table for the console's sign-in form and the API's bearer
tokens, so a guesser gains nothing by switching): past :data:`FREE_FAILURES` from one address, the next try must
wait twice as long as the last, up to :data:`MAX_BACKOFF_S`; a try during the wait is a 429 and is not judged
(not even a right token: otherwise the wait would not slow a guesser down). Only failures are counted, per address
(an IPv6 client per /64, the share one host is given), so a guesser elsewhere never delays the token's holder, and
the table is bounded (:data:`MAX_TRACKED` addresses, the least recently failed forgotten first).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from admin.api.auth import Role

COOKIE = "graft_console"
MAX_PER_CLIENT = 16  # sessions of one role from one address (a person's browsers and devices)
MAX_PER_ROLE = 500  # sessions of one role in all
FREE_FAILURES = 5  # wrong tokens from one address before it backs off
MAX_BACKOFF_S = 60.0
FORGET_AFTER_S = 15 * 60.0  # an address with no wrong token for this long starts afresh
MAX_TRACKED = 10_000  # addresses remembered by the throttle (oldest forgotten first)


@dataclass(frozen=True)
class Session:
    id: str
    role: Role
    csrf: str
    expires: float  # time.time()
    client: str = "?"  # the address it signed in from

    @property
    def is_admin(self) -> bool:
        return self.role in ("admin", "insecure")

    def csrf_ok(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given).encode(), self.csrf.encode())


class SessionStore:
    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.time):
        self.ttl_s = ttl_s
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # oldest first
        self._lock = threading.Lock()

    def create(self, role: Role, client: str = "?") -> Session:
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), role, secrets.token_urlsafe(32), now + self.ttl_s, client)
        with self._lock:
            for old in [s.id for s in self._sessions.values() if s.expires < now]:
                del self._sessions[old]
            self._sessions[session.id] = session
            self._trim(lambda s: s.role == role and s.client == client, MAX_PER_CLIENT)
            self._trim(lambda s: s.role == role, MAX_PER_ROLE)
        return session

    def _trim(self, same: Callable[[Session], bool], keep: int) -> None:
        """The oldest sessions that ``same`` selects, beyond the newest ``keep``."""
        mine = [s.id for s in self._sessions.values() if same(s)]
        for old in mine[: max(0, len(mine) - keep)]:
            del self._sessions[old]

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires < self.clock():
                del self._sessions[session_id]
                return None
            return session

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)


@dataclass
class _Failures:
    count: int
    last: float


class SignInThrottle:
    """Wrong tokens per address, and how long the address must wait before its next try."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._failures: OrderedDict[str, _Failures] = OrderedDict()
        self._lock = threading.Lock()

    def wait_s(self, client: str) -> float:
        """Seconds ``client`` must still wait before a token of its may be judged (0: now)."""
        client = client_key(client)
        with self._lock:
            f = self._failures.get(client)
            if f is None or f.count < FREE_FAILURES:
                return 0.0
            backoff = min(MAX_BACKOFF_S, 2.0 ** (f.count - FREE_FAILURES))
            return max(0.0, f.last + backoff - self.clock())

    def failed(self, client: str) -> None:
        client = client_key(client)
        now = self.clock()
        with self._lock:
            f = self._failures.pop(client, None)
            if f is None or now - f.last > FORGET_AFTER_S:
                f = _Failures(0, now)
            self._failures[client] = _Failures(f.count + 1, now)  # most recent last
            while len(self._failures) > MAX_TRACKED:
                self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client_key(client), None)

    def __len__(self) -> int:
        return len(self._failures)


def client_key(host: str) -> str:
    """What one throttle entry counts: an IPv4 address, or an IPv6 client's /64 (a host is given a whole /64, so
    counting single IPv6 addresses would give a guesser 2**64 fresh starts)."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host  # "?" or a name: counted as given
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


def cookie_value(cookie_header: str | None) -> str | None:
    """The session id from a ``Cookie`` header, without trusting anything else in it."""
    for part in (cookie_header or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None
