"""A stream of prediction requests kept running across model swaps, recording every failure."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx


class PredictionStream:
    """Client threads calling ``send`` until stopped; ``ok``, ``errors`` and the ``versions`` that answered."""

    def __init__(
        self,
        send: Callable[[httpx.Client], httpx.Response],
        version_of: Callable[[httpx.Response], str],
        threads: int = 2,
        pause_s: float = 0.0,
        timeout_s: float = 60.0,
    ):
        self.send, self.version_of = send, version_of
        self.pause_s, self.timeout_s = pause_s, timeout_s
        self.ok = 0
        self.errors: list[str] = []
        self.versions: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def _loop(self) -> None:
        with httpx.Client(timeout=self.timeout_s) as c:
            while not self._stop.is_set():
                try:
                    r = self.send(c)
                    with self._lock:
                        if r.status_code == 200:
                            self.ok += 1
                            self.versions.add(self.version_of(r))
                        else:
                            self.errors.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    with self._lock:
                        self.errors.append(repr(e))
                self._stop.wait(self.pause_s)

    def __enter__(self) -> PredictionStream:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 10)
