"""TorchServe, configured and run by graft: the launcher library (``graft serve`` is graft/serve.py).

:class:`TorchServe` writes ``config.properties`` into its own work folder (local addresses, token
authorization, ``allowed_urls`` limited to the store, Prometheus metrics with the handler's declared),
starts the Java frontend in its own process group, waits until every archive's workers are READY, makes
the pinned (else the newest) version of each model the default, and stops the whole tree. It runs ``java``
as ``torchserve`` would, minus its global pid file in /tmp (one TorchServe per machine), with a private
``java.io.tmpdir`` so the workers' Unix sockets (``.ts.sock.<port>``) of two instances cannot collide.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from graft.core.errors import ServeError, UpstreamError
from graft.core.util import child_env, die_with_parent
from graft.torchserve.client import KEY_FILE, KeyKind, TokenKeys, TorchServeClient, load_keys
from graft.torchserve.properties import check_extra_properties, config_properties, host_port
from graft.torchserve.store import Archive, default_versions, scan_store

log = logging.getLogger(__name__)

PID_FILE = "torchserve.pid"


@dataclass
class ServeConfig:
    model_store: Path
    inference_address: str = "http://127.0.0.1:8080"
    management_address: str = "http://127.0.0.1:8081"
    metrics_address: str = "http://127.0.0.1:8082"
    # gRPC servers always start in TorchServe 0.12; keep them local and on ports we choose.
    grpc_inference_port: int = 7070
    grpc_management_port: int = 7071
    grpc_address: str = "127.0.0.1"
    auth: bool = True
    token_expiration_min: int = 60
    # Frontend limit on a whole request body; the handler's per-image limit (max_body_bytes) is lower.
    max_request_bytes: int = 16 * 1024 * 1024
    workdir: Path | None = None  # None: a fresh private temporary folder
    java: str = "java"
    # SIGTERM to the frontend if this process dies (Linux). Only for a launcher that stays on the thread
    # that started it (the CLI): the kernel ties it to the starting thread, not the process.
    die_with_parent: bool = False
    # More TorchServe properties (``graft serve --ts-config``); never one of PROTECTED_PROPERTIES.
    extra_properties: dict[str, str] = field(default_factory=dict)
    # Pinned default version per model (``GRAFT_DEFAULT_VERSIONS`` or the admin's registry); unpinned models
    # get their newest.
    default_versions: dict[str, str] = field(default_factory=dict)
    # The versions to load, per model (the default and its rollback targets); models not named load every
    # archive in the store.
    only_versions: dict[str, list[str]] = field(default_factory=dict)
    # Variables for TorchServe and its workers beside this process's (secrets never pass): capture settings.
    environment: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_extra_properties(self.extra_properties)


def free_ports(n: int) -> list[int]:
    """``n`` distinct local ports that were free a moment ago (for tests, benchmarks and the demo)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [int(s.getsockname()[1]) for s in socks]
    for s in socks:
        s.close()
    return ports


def read_keys(workdir: Path) -> TokenKeys:
    """The tokens TorchServe wrote to ``WORKDIR/key_file.json``."""
    try:
        return load_keys(Path(workdir) / KEY_FILE)
    except UpstreamError as e:
        raise ServeError(str(e)) from e


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) members of a process group."""
    import psutil

    def member(proc: psutil.Process) -> bool:
        try:
            return os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE
        except (OSError, psutil.Error):  # gone meanwhile
            return False

    return [p.pid for p in psutil.process_iter() if member(p)]


class TorchServe:
    """One TorchServe instance; use as a context manager or call start / wait_ready / stop."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        # Created (mode 0700) by prepare(), not here: constructing a TorchServe has no side effects.
        default = Path(tempfile.gettempdir()) / f"graft-serve-{uuid.uuid4().hex[:12]}"
        self.workdir = Path(config.workdir or default).resolve()
        self.key_file = self.workdir / KEY_FILE
        self.inference_url = config.inference_address.rstrip("/")
        self.management_url = config.management_address.rstrip("/")
        self.metrics_url = config.metrics_address.rstrip("/")
        self.archives: list[Archive] = []
        self.defaults: dict[str, str] = {}  # model -> the version wait_ready makes its default
        self.proc: subprocess.Popen[bytes] | None = None
        self._pgid: int | None = None
        # Reads key_file.json lazily: it appears only once the frontend is up.
        self.client = TorchServeClient(
            self.management_url, self.inference_url, self.key_file if config.auth else None, timeout_s=60
        )

    def keys(self) -> TokenKeys | None:
        return self.client.keys.read()

    def headers(self, kind: KeyKind = "inference") -> dict[str, str]:
        """``Authorization`` for the inference or management API (empty with auth off)."""
        return self.client.headers(kind)

    # lifecycle
    def prepare(self) -> list[str]:
        """Write config.properties and the metrics config; return the java command line."""
        from graft.core.metrics import metrics_config_yaml

        store = Path(self.config.model_store)
        if not store.is_dir():
            raise ServeError(f"model store {store} is not a folder")
        if shutil.which(self.config.java) is None:
            raise ServeError(f"'{self.config.java}' not found: TorchServe's frontend needs a Java 17 runtime")
        only = self.config.only_versions
        self.archives = [a for a in scan_store(store) if a.name not in only or a.version in only[a.name]]
        self.defaults = default_versions(self.archives, self.config.default_versions)  # before Java starts
        if not self.archives:
            log.warning("no .mar in %s: TorchServe starts with no model (register one via the management API)", store)
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)  # key_file.json lands here
        (self.workdir / "tmp").mkdir(exist_ok=True)
        metrics = self.workdir / "metrics.yaml"
        metrics.write_text(metrics_config_yaml())
        props = self.workdir / "config.properties"
        props.write_text(config_properties(self.config, metrics, self.archives))
        import ts

        ts_home = Path(ts.__file__).resolve().parent.parent
        return [
            self.config.java, f"-Dmodel_server_home={ts_home}", f"-Djava.io.tmpdir={self.workdir / 'tmp'}",
            "-cp", f".:{ts_home / 'ts' / 'frontend' / '*'}", "org.pytorch.serve.ModelServer",
            "--python", sys.executable, "-f", str(props), "-s", str(store.resolve()), "-ncs",
        ]

    def _check_ports(self) -> None:
        c = self.config
        endpoints = [host_port(a) for a in (c.inference_address, c.management_address, c.metrics_address)]
        endpoints += [(c.grpc_address, c.grpc_inference_port), (c.grpc_address, c.grpc_management_port)]
        busy = [f"{h}:{p}" for h, p in endpoints if port_in_use(h, p)]
        if busy:
            raise ServeError(f"address in use: {', '.join(busy)} (another TorchServe?); choose other addresses/ports")

    def _stop_leftover(self) -> None:
        """A TorchServe an earlier run left in this work folder (its parent was killed -9): stop it first.

        The pid file names its process group; the leader must still be Java started with this folder's
        config.properties, so a recycled pid is spared.
        """
        try:
            pgid = int((self.workdir / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return
        marker = str(self.workdir / "config.properties")
        try:
            cmdline = Path(f"/proc/{pgid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmdline = ""
        if marker in cmdline:
            log.warning("stopping TorchServe (pid %d) left over from an earlier run in %s", pgid, self.workdir)
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _group_pids(pgid) and time.monotonic() < deadline:
                time.sleep(0.2)
            _signal_group(pgid, signal.SIGKILL)
        (self.workdir / PID_FILE).unlink(missing_ok=True)

    def start(self) -> None:
        if self.proc is not None:
            raise ServeError("already started")
        cmd = self.prepare()
        self._stop_leftover()
        self._check_ports()
        self.key_file.unlink(missing_ok=True)  # never read a previous run's tokens
        if not self.config.auth:
            log.warning("token authorization is OFF (--no-auth): anyone who can reach the ports can use every API")
        out = open(self.workdir / "torchserve.out", "wb")  # noqa: SIM115 - owned by the child from here on
        self.proc = subprocess.Popen(
            cmd, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=child_env(self.config.environment),
            start_new_session=True,  # its own process group: stop() signals the whole tree at once
            umask=0o077, preexec_fn=die_with_parent(signal.SIGTERM) if self.config.die_with_parent else None,
        )
        out.close()
        self._pgid = self.proc.pid
        (self.workdir / PID_FILE).write_text(f"{self.proc.pid}\n")
        log.info("TorchServe starting (pid %d), work folder %s", self.proc.pid, self.workdir)

    def log_tail(self, lines: int = 40) -> str:
        path = self.workdir / "torchserve.out"
        text = path.read_text(errors="replace") if path.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = 300) -> None:
        """Wait until every archive's workers are READY, then set each model's default (pinned, else newest)."""
        if self.proc is None:
            raise ServeError("not started")
        expected = {(a.name, a.version) for a in self.archives}
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServeError(f"TorchServe exited with code {self.proc.returncode}:\n{self.log_tail()}")
            missing = expected
            if self.key_file.exists() or not self.config.auth:  # the key file appears once the frontend is up
                try:
                    missing = expected - self.client.ready_versions()
                    if not missing:
                        break
                except (UpstreamError, ValueError):  # starting up; key file half-written
                    pass
            if time.monotonic() > deadline:
                raise ServeError(f"not ready after {timeout:.0f}s, waiting for {sorted(missing)}:\n{self.log_tail()}")
            time.sleep(0.5)
        for name, version in sorted(self.defaults.items()):
            try:
                self.client.set_default(name, version)
            except UpstreamError as e:
                raise ServeError(f"could not make {name} v{version} the default: {e}") from e
        log.info("ready: %s", ", ".join(f"{n} v{v}" for n, v in sorted(self.defaults.items())) or "no models")

    def process_tree(self) -> list[int]:
        """Live processes of this TorchServe (frontend, workers, metric collectors)."""
        return _group_pids(self._pgid) if self._pgid is not None else []

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``timeout``; verify nothing survives."""
        if self.proc is None or self._pgid is None:
            return
        pgid = self._pgid
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("TorchServe did not stop within %.0fs; killing it", timeout)
        deadline = time.monotonic() + 10  # workers exit on their own once the frontend's socket closes
        while self.process_tree() and time.monotonic() < deadline:
            time.sleep(0.2)
        _signal_group(pgid, signal.SIGKILL)
        self.proc.wait()
        # A killed process takes a moment to exit: TorchServe respawns workers while it stops (seen in the
        # container image), one outlives it, and right after SIGKILL it can still be listed as alive.
        deadline = time.monotonic() + 10
        while (left := self.process_tree()) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.proc = None
        self.key_file.unlink(missing_ok=True)  # tokens are secrets; TorchServe's own --stop removes them too
        (self.workdir / PID_FILE).unlink(missing_ok=True)
        if left:
            raise ServeError(f"processes survived the stop: {left}")
        log.info("TorchServe stopped")

    def __enter__(self) -> TorchServe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already empty
        os.killpg(pgid, sig)

