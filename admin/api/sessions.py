"""Console sessions: a random id in an HttpOnly cookie, the role and a CSRF token kept server-side.

Kept in memory: a restart signs everyone out, which is the safe direction. The store is bounded (the
oldest session goes first) so that signing in in a loop cannot grow it without end.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from admin.api.auth import Role

COOKIE = "graft_console"
MAX_SESSIONS = 1000


@dataclass(frozen=True)
class Session:
    id: str
    role: Role
    csrf: str
    expires: float  # time.time()

    @property
    def is_admin(self) -> bool:
        return self.role in ("admin", "insecure")

    def csrf_ok(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given).encode(), self.csrf.encode())


class SessionStore:
    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, role: Role) -> Session:
        session = Session(secrets.token_urlsafe(32), role, secrets.token_urlsafe(32), time.time() + self.ttl_s)
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires < time.time():
                del self._sessions[session_id]
                return None
            return session

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)


def cookie_value(cookie_header: str | None) -> str | None:
    """The session id from a ``Cookie`` header, without trusting anything else in it."""
    for part in (cookie_header or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None
