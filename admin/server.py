"""Running the admin service: ``graft admin`` on its own, or beside TorchServe from ``graft serve``.

The seam for ``graft serve``::

    add_admin_arguments(parser)                       # --admin-host/--admin-port/--admin-state-dir/...
    settings = settings_from_args(args, torchserve_management_url=..., torchserve_inference_url=...,
                                  torchserve_key_file=..., model_store=...)
    with AdminServer(settings) as admin:              # uvicorn in a thread; start() returns once it listens
        ...                                           # TorchServe runs in the foreground
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from admin.connections import MAX_UPLOADS_PER_CLIENT, GuardedServer, Limits, idle_limit, protocol_class
from admin.rollouts.base import Rollout
from admin.runners.base import JobRunner
from admin.settings import DEV_TOKEN_FILE, AdminSettings, load_settings
from admin.statelock import StateLock
from graft.core.errors import ConfigError

log = logging.getLogger(__name__)

# (flag, settings field, type, help). Defaults stay None so GRAFT_* variables apply when a flag is absent.
_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--admin-host", "admin_host", str, "admin API address (default 127.0.0.1)"),
    ("--admin-port", "admin_port", int, "admin API port (default 8090; 0 = any free port)"),
    ("--admin-state-dir", "state_dir", Path, "SQLite file, samples, jobs and run folders (default runs/admin)"),
    ("--admin-token-file", "admin_token_file", Path, "file holding the admin token (else GRAFT_ADMIN_TOKEN)"),
    ("--model-name", "model_name", str, "the TorchServe model the admin manages (default: the one in the store)"),
    ("--samples-token-file", "samples_token_file", Path, "file holding the samples-only token"),
    ("--base-data", "base_data", Path, "image folder the first model was trained on (replayed; its val/ is holdout)"),
    ("--base-manifest", "base_manifest", Path, "or the dataset manifest the first model was trained on"),
    ("--initial-run", "initial_run", Path, "run folder of the model in service, imported when the registry is empty"),
    ("--initial-version", "initial_version", str, "its version (default 1)"),
    ("--auto-retrain-after", "auto_retrain_after", int, "start a job after N new samples (default 0 = off)"),
    ("--gate-policy", "gate_policy", str,
     "non_inferior (default: promoted unless significantly worse), better (only if significantly better), "
     "or accuracy (raw holdout accuracy, graft's first rule)"),
    ("--gate-alpha", "gate_alpha", float, "significance level of the gate's paired tests (default 0.05)"),
    ("--gate-tolerance", "gate_tolerance", float, "--gate-policy accuracy: the accuracy drop allowed (default 0)"),
    ("--gate-floor", "gate_floor", float, "minimum holdout accuracy to promote (default 0)"),
    ("--label-check", "label_check", str,
     "hold (default: when the model in service disagrees with an unusual share of a label's new samples, the "
     "candidate waits for an admin), note (only said in the job report) or off"),
]


def add_admin_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("admin service")
    for flag, field, type_, help_ in _FLAGS:
        group.add_argument(
            flag, dest=f"admin_{field}" if not field.startswith("admin_") else field, type=type_, help=help_
        )
    group.add_argument(
        "--dev-token",
        dest="admin_dev_token",
        action="store_true",
        help=f"one machine, development: without an admin token, generate one into STATE_DIR/{DEV_TOKEN_FILE} "
        "(mode 0600) and use it, instead of refusing to start",
    )


def settings_from_args(args: argparse.Namespace, **extra: Any) -> AdminSettings:
    """Settings from the environment, then the flags given, then ``extra`` (what ``graft serve`` knows)."""
    values: dict[str, Any] = {}
    for _flag, field, _type, _help in _FLAGS:
        dest = f"admin_{field}" if not field.startswith("admin_") else field
        values[field] = getattr(args, dest, None)
    values.update(extra)
    settings = load_settings(**values)
    wants_dev_token = getattr(args, "admin_dev_token", False) and not settings.insecure_dev
    if wants_dev_token and settings.resolved_admin_token() is None:
        settings = settings.model_copy(update={"admin_token_file": dev_token_file(settings.state_dir)})
    return settings


def dev_token_file(state_dir: Path) -> Path:
    """``STATE_DIR/admin.token``: a random admin token, created once with mode 0600 and reused after."""
    path = Path(state_dir) / DEV_TOKEN_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        log.warning("development token: generated an admin token in %s (mode 0600)", path)
    log.info("admin token in %s: send 'Authorization: Bearer $(cat %s)'", path, path)
    return path


def single_threaded_blas() -> None:
    """One BLAS thread for this process. The admin answers many small requests at once, and its numpy products
    (the intake's retrieval: one product over every holdout picture's outline per upload) are small: OpenBLAS's
    extra threads only spin beside them. Measured per upload at 33,000 holdout pictures on 2 busy cores: 30-34 ms
    of CPU with two BLAS threads, 13.6-13.9 ms with one (12.8-12.9 ms at 2,800). Training runs in other processes."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


class AdminServer:
    """uvicorn serving ``create_app(settings)`` in a background thread of this process, holding the state
    directory's lock (:mod:`admin.statelock`) from before the app opens it until :meth:`stop`."""

    def __init__(
        self,
        settings: AdminSettings,
        *,
        runner: JobRunner | None = None,
        rollout: Rollout | None = None,
        app_kwargs: dict[str, Any] | None = None,
        lock: StateLock | None = None,
    ):
        """``lock``: the state directory's, already held by the caller (``graft serve`` takes it before it
        arranges the model store), who releases it; else the server takes its own and releases it in stop()."""
        from admin.app import create_app

        self.settings = settings
        # Before the app opens anything: opening fails the jobs it finds running, which may be another admin's.
        self._own_lock = lock is None
        self.lock = lock if lock is not None else StateLock(settings.state_dir).acquire()
        if not (self.lock.held and self.lock.path.parent == Path(settings.state_dir)):
            raise ValueError(f"the lock given is not held on {settings.state_dir}")
        try:
            self.app = create_app(settings, runner=runner, rollout=rollout, **(app_kwargs or {}))
        except BaseException:
            self._release()
            raise
        # Idle connections (no request yet) are bounded on their own and never count toward the 503 limit; requests
        # whose body is still arriving may take at most half the request slots, and one client a few of them.
        uploads = max(1, settings.max_connections // 2)
        limits = Limits(settings.header_timeout_s, settings.max_idle_per_client, idle_limit(settings.max_connections),
                        max_uploads_per_client=min(MAX_UPLOADS_PER_CLIENT, uploads), max_uploads=uploads)  # fmt: skip
        protocol = protocol_class(limits)
        config = uvicorn.Config(
            self.app, host=settings.admin_host, port=settings.admin_port, log_level="warning", lifespan="on",
            timeout_graceful_shutdown=10,
            # Bounded: past max_connections requests in progress uvicorn answers 503; idle keep-alive connections
            # close after 5 s.
            limit_concurrency=settings.max_connections, timeout_keep_alive=5,
            # uvicorn's own h11 protocol, plus a header deadline, and idle connections that are not counted as
            # requests, so that sockets which never finish a request cannot make probes and admins a 503
            # (admin/connections.py).
            http=protocol,
        )  # fmt: skip
        self.server = GuardedServer(config, protocol.book)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.settings.admin_host, self.port
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        servers = getattr(self.server, "servers", None) or []
        for srv in servers:
            for sock in srv.sockets:
                return int(sock.getsockname()[1])
        return self.settings.admin_port

    @property
    def running(self) -> bool:
        """Started and not stopped (``graft serve`` watches it beside TorchServe)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 30.0) -> AdminServer:
        single_threaded_blas()
        # uvicorn installs no signal handlers outside the main thread: the caller keeps Ctrl-C.
        self._thread = threading.Thread(target=self.server.run, name="graft-admin", daemon=True)
        self._thread.start()
        try:
            self._wait_started(timeout)
        except BaseException:
            self.stop()  # the lock too: a server that did not start holds nothing
            raise
        if self.settings.api_docs:
            log.info("admin API on %s (API docs at %s/docs)", self.url, self.url)
        else:  # /docs is 404 unless GRAFT_API_DOCS=true: do not advertise it
            log.info("admin API on %s (console at %s/console)", self.url, self.url)
        return self

    def _wait_started(self, timeout: float) -> None:
        assert self._thread is not None
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise ConfigError(
                    f"the admin service could not start on {self.settings.admin_host}:{self.settings.admin_port}"
                )
            if time.monotonic() > deadline:
                raise ConfigError(f"the admin service did not start within {timeout:.0f}s")
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self.server.should_exit = True
            self._thread.join(timeout)
            self._thread = None
        self._release()

    def _release(self) -> None:
        if self._own_lock:
            self.lock.release()

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C in the main thread stops it)."""
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            log.info("stopping the admin service")
        finally:
            self.stop()

    def __enter__(self) -> AdminServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
