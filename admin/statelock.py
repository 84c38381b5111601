"""One admin process per state directory.

Starting the admin fails the jobs it finds running (they were its own, interrupted by a restart), and the intake
places one upload at a time only within its process (docs/concepts/holdout.md). A second admin on the same state
directory would fail the first one's jobs and place uploads without seeing the other's. So the admin holds an
exclusive lock on ``STATE_DIR/admin.lock`` from before it opens anything until it stops; a second one refuses to
start and says which process holds it.

The lock is the kernel's (``flock``): it goes with the process, however that ends, so a crash leaves no stale lock
to clean up. On Kubernetes the deployment runs one replica with the ``Recreate`` strategy, so the new pod starts
after the old one stopped; the lock is the guard for when that is not so.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from types import TracebackType

from graft.core.errors import ConfigError
from graft.core.util import private_dir

log = logging.getLogger(__name__)

LOCK_FILE = "admin.lock"


class StateLock:
    """``acquire()`` or ConfigError; ``release()`` (idempotent)."""

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> StateLock:
        if self._fd is not None:
            return self
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by child processes (PEP 446)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"another admin process (pid {holder}) is using the state directory {self.path.parent}: stop it "
                "first, or give this one its own --admin-state-dir"
            ) from e
        except OSError as e:  # a volume without locks (ENOLCK, EOPNOTSUPP): the guard is lost, not the service
            log.warning("cannot lock %s (%s): nothing stops a second admin on this state directory", self.path, e)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.close(fd)  # closing the only descriptor drops the lock; the file stays (removing it would race a waiter)

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
