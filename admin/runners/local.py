"""The default :class:`admin.runners.base.JobRunner`: ``graft train`` in a child process on this machine.

Training runs in its own process (and its own session, so the whole tree can be stopped): a crash
or an out-of-memory kill there ends the job, never the admin service. Its output goes to
``train.log`` in the job folder (the parent of the run folder); progress comes from the run folder's
``progress.json``, which training rewrites atomically after every epoch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from admin.runners.base import RunnerStatus, TrainRequest
from graft.core.errors import UpstreamError
from graft.core.util import child_env, die_with_parent

log = logging.getLogger(__name__)

LOG_NAME = "train.log"


def default_command() -> list[str]:
    return [sys.executable, "-m", "graft.cli"]


def read_progress(run_dir: Path) -> float:
    """``fraction`` from ``progress.json``; 0 while it does not exist or is being replaced."""
    try:
        value = float(json.loads((run_dir / "progress.json").read_text()).get("fraction", 0.0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0
    return min(max(value, 0.0), 1.0)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


class LocalJobRunner:
    """Runs each :class:`TrainRequest` as ``python -m graft.cli train ...`` in a child process."""

    def __init__(self, command: Sequence[str] | None = None, env: dict[str, str] | None = None):
        # ``command`` is the prefix before ``train ...``; tests put a stand-in trainer here.
        self.command = list(command) if command is not None else default_command()
        self.env = env
        self._procs: dict[str, tuple[subprocess.Popen[bytes], TrainRequest]] = {}
        self._lock = threading.Lock()

    def submit(self, request: TrainRequest) -> None:
        request.output_dir.mkdir(parents=True, exist_ok=True)
        log_path = request.output_dir.parent / LOG_NAME
        argv = [*self.command, *request.argv()]
        env = child_env(self.env)  # no admin or samples token in a process that decodes uploads
        try:
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,  # its own process group: cancel() stops the whole tree
                    # Dies with the admin (even on kill -9): an orphaned trainer would hold a GPU for nothing.
                    preexec_fn=die_with_parent(signal.SIGKILL),
                )
        except OSError as e:
            raise UpstreamError(f"cannot start the training process {argv[0]}: {e}") from e
        log.info("job %s: training started (pid %d): %s", request.job_id, proc.pid, " ".join(argv))
        with self._lock:
            self._procs[request.job_id] = (proc, request)

    def pid(self, job_id: str) -> int | None:
        with self._lock:
            entry = self._procs.get(job_id)
        return entry[0].pid if entry else None

    def status(self, job_id: str) -> RunnerStatus:
        with self._lock:
            entry = self._procs.get(job_id)
        if entry is None:
            return RunnerStatus("failed", 0.0, f"no training process is known for job {job_id}")
        proc, request = entry
        code = proc.poll()
        if code is None:
            return RunnerStatus("running", read_progress(request.output_dir))
        if code == 0:
            return RunnerStatus("succeeded", 1.0)
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        if code in (-signal.SIGKILL, 137):
            how += " (out of memory?)"
        tail = log_tail(request.output_dir.parent / LOG_NAME)
        return RunnerStatus("failed", read_progress(request.output_dir), f"training failed: {how}\n{tail}".strip())

    def cancel(self, job_id: str) -> None:
        with self._lock:
            entry = self._procs.get(job_id)
        if entry is None or entry[0].poll() is not None:
            return
        proc = entry[0]
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.info("job %s: training process %d stopped", job_id, proc.pid)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def kill_orphan(pid: int, marker: str) -> bool:
    """After a crash: stop the training process a previous admin left running, if it is still ours.

    ``marker`` (the job's run folder) must appear in its command line, so a recycled pid is spared.
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return False
    if marker not in cmdline:
        return False
    _signal_group(pid, signal.SIGKILL)
    log.warning("killed training process %d left over from before the restart", pid)
    return True
