"""``graft serve --runtime kserve``: graft's KServe runtime (graft/kserve/) and the admin beside it.

The same plan as TorchServe (graft/serve_plan.py: the store, the default versions, the admin's keep set);
the runtime runs as a child process (``python -m graft.kserve.server``: kserve and its gRPC stack never
load in this process), and the admin drives it through admin/rollouts/kserve.py.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from graft.core.errors import ConfigError, ServeError
from graft.core.util import child_env, die_with_parent, stop_child
from graft.torchserve.launcher import port_in_use

if TYPE_CHECKING:
    from admin.server import AdminServer
    from admin.settings import AdminSettings
    from admin.statelock import StateLock
    from graft.serve_plan import Served

log = logging.getLogger(__name__)


class KServeRuntime:
    """The runtime's child process: started, waited for, stopped with SIGTERM."""

    def __init__(self, served: Served, http_port: int, grpc_port: int, workdir: Path, auth: bool,
                 env: dict[str, str]) -> None:  # fmt: skip
        self.served, self.http_port, self.grpc_port, self.workdir = served, http_port, grpc_port, workdir
        self.key_file = workdir / "key_file.json" if auth else None
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{http_port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "graft.kserve.server", "--model-store", str(self.served.store),
               "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port), "--workdir", str(self.workdir)]
        cmd += [f"--default={n}={v}" for n, v in sorted(self.served.pins.items())]
        cmd += [f"--only={n}={','.join(vs)}" for n, vs in sorted(self.served.only.items())]
        cmd += ["--key-file", str(self.key_file)] if self.key_file else ["--no-auth"]
        return cmd

    def start(self) -> None:
        for port in (self.http_port, self.grpc_port):
            if port and port_in_use("127.0.0.1", port):
                raise ConfigError(f"port {port} is in use: choose other --kserve-http-port/--kserve-grpc-port")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "kserve.log"
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, env=child_env(self.env),
                                         preexec_fn=die_with_parent(signal.SIGTERM))  # fmt: skip

    def wait_ready(self, timeout_s: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServeError(f"the KServe runtime exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise ServeError(f"the KServe runtime was not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is not None:
            stop_child(self.proc, timeout_s, "the KServe runtime")


def announce(runtime: KServeRuntime, admin: AdminServer | None) -> None:
    log.info("runtime    KServe (graft.kserve: graft's handler on KServe's ModelServer, no Java)")
    log.info("inference  %s  (v1 POST /v1/models/NAME:predict; OIP v2 POST /v2/models/NAME/infer)", runtime.url)
    if runtime.grpc_port:
        log.info("grpc       127.0.0.1:%d  (OIP v2 GRPCInferenceService)", runtime.grpc_port)
    log.info("metrics    %s/metrics (Prometheus)", runtime.url)
    if runtime.key_file:
        log.info("keys in %s: send 'Authorization: Bearer <inference.key>' (management.key for /graft/v1)",
                 runtime.key_file)
    if admin is not None:
        log.info("admin      %s  (Authorization: Bearer <admin token>; console at %s/console)", admin.url, admin.url)


def serve_kserve(args: argparse.Namespace) -> int:
    from admin.server import settings_from_args
    from admin.statelock import StateLock
    from graft.serve import admin_preflight
    from graft.serve_plan import plan_with_admin, plan_without_admin

    run_dir = Path(args.run_dir) if args.run_dir else None
    if args.no_admin:
        served = plan_without_admin(run_dir, args.model_store, settings_from_args(args))
        workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="graft-kserve-"))
        return run_foreground(_runtime(args, served, workdir, None), args.ready_timeout, None)
    preflight = admin_preflight(args)
    # Held from before the store is arranged until the admin stops (admin/statelock.py).
    with StateLock(preflight.state_dir) as lock:
        served = plan_with_admin(run_dir, args.model_store, preflight)
        settings = served.settings
        assert settings is not None
        workdir = Path(args.workdir) if args.workdir else settings.state_dir / "kserve"
        return run_foreground(_runtime(args, served, workdir, settings), args.ready_timeout, settings, lock)


def _runtime(args: argparse.Namespace, served: Served, workdir: Path, settings: AdminSettings | None) -> KServeRuntime:
    from graft.serve import capture_environment

    env = capture_environment(args, settings)
    return KServeRuntime(served, args.kserve_http_port, args.kserve_grpc_port, workdir, not args.no_auth, env)


def run_foreground(
    runtime: KServeRuntime, ready_timeout: float, settings: AdminSettings | None, lock: StateLock | None = None
) -> int:
    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _term)
    admin: AdminServer | None = None
    try:
        runtime.start()
        runtime.wait_ready(ready_timeout)
        if settings is not None:
            from admin.server import AdminServer

            pointed = settings.model_copy(
                update={"rollout": "kserve", "kserve_url": runtime.url, "kserve_key_file": runtime.key_file}
            )
            admin = AdminServer(pointed, lock=lock)
            admin.start()
        announce(runtime, admin)
        assert runtime.proc is not None
        while runtime.proc.poll() is None and (admin is None or admin.running):
            time.sleep(0.5)
        log.error("%s stopped on its own:\n%s", "the KServe runtime" if runtime.proc.poll() is not None else
                  "the admin service", runtime.log_tail())  # fmt: skip
        return 1
    except KeyboardInterrupt:
        log.info("stopping")
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if admin is not None:
                admin.stop()
        finally:
            runtime.stop()
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, sigint)
