"""``stop_child``: a clean stop by SIGTERM, and a kill when the child ignores it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from graft.core.util import stop_child

# The child says it is ready only once its handler is in place, so the signal never lands before it.
_IGNORES_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
)
_SLEEPS = "import time; print('ready', flush=True); time.sleep(60)"


def _start(code: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_a_child_that_honours_sigterm_stops_by_it() -> None:
    proc = _start(_SLEEPS)
    assert stop_child(proc, 10, "sleeper") == -signal.SIGTERM


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(caplog: pytest.LogCaptureFixture) -> None:
    proc = _start(_IGNORES_TERM)
    t0 = time.monotonic()
    assert stop_child(proc, 0.5, "stubborn") == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - t0 < 10
    assert "stubborn" in caplog.text and "killing it" in caplog.text


def test_a_child_already_gone_is_left_alone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert stop_child(proc, 1) is None
