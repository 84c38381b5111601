"""Small helpers every layer needs: timestamps, file digests, atomic writes."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    """``sha256:<hex>``: the form digests take in ``model.json``."""
    return f"sha256:{file_sha256(path)}"


def file_key(path: Path) -> str | None:
    """``path|size|mtime_ns``: what a per-file cache is keyed by (a file replaced in place gets a new key); None
    when the file is gone (never cached)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner may enter (0700), made if missing and tightened if it was wider: what is
    inside (tokens, samples, the database) is nobody else's on a shared machine."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        try:
            path.chmod(0o700)
        except OSError as e:  # a volume's root owned by someone else (Kubernetes fsGroup): its mount decides
            log.warning("cannot make %s private (0700): %s", path, e)
    return path


def write_atomic(path: Path, data: bytes, fsync: bool = True, mode: int = 0o666) -> None:
    """Write-then-rename in the same folder: a reader never sees a partial file.

    With ``fsync`` the bytes and the rename are flushed to disk, so the file survives a crash. ``mode`` is the new
    file's (the umask applies too): 0o600 for what only its owner may read.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # unique per writer: writers race
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)


def _set_pdeathsig(sig: int) -> None:  # runs in the child between fork and exec
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # 1 = PR_SET_PDEATHSIG


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes a child receive ``sig`` when its parent dies, even by SIGKILL (Linux).

    The kernel ties it to the *thread* that forked: start such children from a thread that outlives them.
    None where prctl is not available (not Linux).
    """
    if not os.path.exists("/proc/self"):
        return None
    return functools.partial(_set_pdeathsig, sig)


# Variables a child process must not inherit: TorchServe's workers run archive code on untrusted input, and
# a training process decodes uploaded images. They get what they need through files and flags instead.
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|PRIVATE_?KEY", re.IGNORECASE)


def stop_child(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout_s: float = 30.0,
               what: str = "a child process") -> int | None:  # fmt: skip
    """Stop a child as Ctrl-C would (SIGTERM: background children of a non-interactive shell ignore SIGINT),
    and kill it when it has not exited after ``timeout_s``. Returns its exit status (None: it was already gone)."""
    if proc.poll() is not None:
        return None
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("%s (pid %d) did not stop in %.0f s after SIGTERM; killing it", what, proc.pid, timeout_s)
        proc.kill()
        return proc.wait()


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) and not name.endswith("_FILE")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without secrets (``GRAFT_ADMIN_TOKEN``, ``*_SECRET``...), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not is_secret_name(k)}
    env.update(extra or {})
    return env
