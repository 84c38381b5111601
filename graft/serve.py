"""``graft serve``: TorchServe and the admin service in one foreground process; Ctrl-C stops both.

TorchServe comes first (graft/torchserve/launcher.py); once every model is ready the admin starts beside it
(admin/launch.py, on 127.0.0.1:8090 by default), since it needs TorchServe's URLs and key file. What
the admin can check without TorchServe (its token, its port) is checked before anything starts, so a
missing token costs no minutes of model loading. ``--no-admin`` runs TorchServe alone: the Kubernetes
inference pods do, the admin having its own Deployment there.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.client.config import ENDPOINTS_FILE
from graft.core.artifact import read_card
from graft.core.errors import ConfigError
from graft.torchserve.launcher import PID_FILE, ServeConfig, TorchServe, port_in_use
from graft.torchserve.properties import host_port, read_properties

if TYPE_CHECKING:
    from admin.server import AdminServer
    from admin.settings import AdminSettings
    from admin.statelock import StateLock
    from graft.serve_plan import Served

log = logging.getLogger(__name__)

# Each port's offset from --port-base N; without it, TorchServe's usual ports and the admin's 8090.
PORT_OFFSETS = {"inference": 0, "management": 1, "metrics": 2, "grpc_inference": 3, "grpc_management": 4, "admin": 10}
DEFAULT_PORTS = {"inference": 8080, "management": 8081, "metrics": 8082, "grpc_inference": 7070,
                 "grpc_management": 7071}  # fmt: skip


def apply_port_base(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the address flags left out: from ``--port-base N`` (N, N+1, ... N+4, the admin N+10), else the
    defaults. A flag given explicitly wins over the base."""
    base = getattr(args, "port_base", None)
    if base is not None and not 1 <= base <= 65535 - max(PORT_OFFSETS.values()):
        raise ConfigError(f"--port-base {base}: give a port between 1 and {65535 - max(PORT_OFFSETS.values())}")

    def port(kind: str) -> int:
        return base + PORT_OFFSETS[kind] if base is not None else DEFAULT_PORTS[kind]

    for kind in ("inference", "management", "metrics"):
        if getattr(args, f"{kind}_address", None) is None:
            setattr(args, f"{kind}_address", f"http://127.0.0.1:{port(kind)}")
    for kind in ("grpc_inference", "grpc_management"):
        if getattr(args, f"{kind}_port", None) is None:
            setattr(args, f"{kind}_port", port(kind))
    if base is not None and getattr(args, "admin_port", None) is None:
        args.admin_port = port("admin")
    return args


def check_torchserve_ports(args: argparse.Namespace, workdir: Path | None) -> None:
    """Refuse now, before any export, when a TorchServe port is taken (one message naming them all).

    A TorchServe an earlier run left in this work folder is stopped by the launcher itself, which then checks
    the ports again; its ports are not counted here."""
    if workdir is not None and (workdir / PID_FILE).is_file():
        return
    endpoints = {name: host_port(getattr(args, f"{name}_address")) for name in ("inference", "management", "metrics")}
    for name in ("grpc_inference", "grpc_management"):
        endpoints[name] = ("127.0.0.1", int(getattr(args, f"{name}_port")))
    busy = [f"{h}:{p} ({name.replace('_', ' ')})" for name, (h, p) in endpoints.items() if port_in_use(h, p)]
    if busy:
        raise ConfigError(f"in use: {', '.join(busy)}. Stop what holds them, or move every port with --port-base N "
                          "(N..N+4 for TorchServe, N+10 for the admin)")  # fmt: skip


def config_from_args(
    args: argparse.Namespace, served: Served | None = None, workdir: Path | None = None
) -> ServeConfig:
    """TorchServe's configuration for these arguments and this plan (default: the --no-admin plan)."""
    apply_port_base(args)
    if served is None:
        from admin.server import settings_from_args
        from graft.serve_plan import plan_without_admin

        served = plan_without_admin(Path(args.run_dir) if args.run_dir else None, args.model_store,
                                    settings_from_args(args))  # fmt: skip
    return ServeConfig(
        model_store=served.store, inference_address=args.inference_address,
        management_address=args.management_address, metrics_address=args.metrics_address,
        grpc_inference_port=args.grpc_inference_port, grpc_management_port=args.grpc_management_port,
        auth=not args.no_auth, token_expiration_min=args.token_expiration_min,
        workdir=Path(args.workdir) if args.workdir else workdir, die_with_parent=True,
        extra_properties=read_properties(Path(args.ts_config)) if args.ts_config else {},
        default_versions=served.pins, only_versions=served.only,
        environment=capture_environment(args, served.settings),
    )  # fmt: skip


def capture_environment(args: argparse.Namespace, settings: AdminSettings | None) -> dict[str, str]:
    """The workers' capture settings (graft/core/handler_settings.py): into the admin's capture folder."""
    rate = getattr(args, "capture_rate", None)
    if rate is None:
        return {}
    if settings is None:  # --no-admin: the folder an admin started later on this state folder reads
        from admin.server import settings_from_args

        settings = settings_from_args(args)
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"--capture-rate {rate}: give the share of requests to keep, between 0 and 1")
    budget = getattr(args, "capture_budget_mb", None)
    if budget is not None and budget < 1:
        raise ConfigError("--capture-budget-mb must be at least 1")
    folder = settings.capture_path
    folder.mkdir(parents=True, exist_ok=True)
    env = {"GRAFT_CAPTURE_RATE": str(rate), "GRAFT_CAPTURE_DIR": str(folder.resolve())}
    if budget is not None:
        env["GRAFT_CAPTURE_BUDGET_MB"] = str(budget)
    log.info("capture: %.1f%% of served inputs into %s", 100 * rate, folder)
    return env


def admin_preflight(args: argparse.Namespace) -> AdminSettings:
    """The admin's settings, checked as far as they do not depend on TorchServe (token, port)."""
    from admin.server import settings_from_args

    settings = settings_from_args(args)
    try:
        settings.check()  # ConfigError without a token (unless --dev-token made one)
    except ConfigError as e:
        raise ConfigError(f"admin service: {e}; or --dev-token on a machine of your own; --no-admin serves "
                          "without it") from e  # fmt: skip
    host, port = settings.admin_host, settings.admin_port
    if port and port_in_use(host, port):  # port 0 = any free port, always available
        raise ConfigError(f"admin address {host}:{port} is in use: choose another --admin-port or --port-base "
                          "(or --no-admin)")  # fmt: skip
    return settings


def admin_settings_for(settings: AdminSettings, server: TorchServe) -> AdminSettings:
    """The admin's settings pointed at this (ready) TorchServe."""
    # model_copy, not settings_from_args: with --no-auth the key file must be None, which load_settings
    # would drop in favour of a GRAFT_TORCHSERVE_KEY_FILE from the environment.
    pointed = settings.model_copy(update={
        "torchserve_management_url": server.management_url,
        "torchserve_inference_url": server.inference_url,
        "torchserve_key_file": server.key_file if server.config.auth else None,
    })  # fmt: skip
    if server.config.extra_properties.get("enable_model_api", "").strip().lower() == "false":
        log.warning("enable_model_api=false: the admin cannot register new model versions with this TorchServe")
    return pointed


def announce(server: TorchServe, admin: AdminServer | None = None) -> None:
    log.info("runtime    TorchServe 0.12 (Java frontend; --runtime kserve serves without it)")
    log.info("inference  %s  (POST /predictions/NAME, Content-Type: application/octet-stream)", server.inference_url)
    log.info("management %s", server.management_url)
    log.info("metrics    %s/metrics (Prometheus)", server.metrics_url)
    if server.config.auth:
        log.info("keys in %s: send 'Authorization: Bearer <inference.key>' (management.key for management;"
                 " API.key renews them via GET %s/token?type=inference)", server.key_file, server.management_url)
    if admin is not None:
        log.info("admin      %s  (Authorization: Bearer <admin token>; console at %s/console)", admin.url, admin.url)
        state = admin.settings.state_dir
        hint = "" if state.resolve() == Path("runs/admin").resolve() else f" --state-dir {state}"
        log.info("client     graft status%s (and upload, retrain, predict...: docs/client.md)", hint)


def _write_endpoints(state_dir: Path, server: TorchServe, admin: AdminServer) -> None:
    """``STATE_DIR/endpoints.json``: where the client commands (``graft upload``, ``graft predict``...) find the
    admin and TorchServe; addresses and the key file's path, no secret. Removed on a clean stop."""
    from graft.client.config import write_endpoints

    write_endpoints(state_dir, {
        "admin_url": admin.url, "inference_url": server.inference_url, "management_url": server.management_url,
        "metrics_url": server.metrics_url, "key_file": str(server.key_file) if server.config.auth else None,
        "model_name": admin.settings.model_name, "pid": os.getpid(),
    })  # fmt: skip


def _watch(server: TorchServe, admin: AdminServer | None) -> int:
    """Block until TorchServe or the admin stops on its own: both are meant to run until Ctrl-C."""
    assert server.proc is not None
    while True:
        code = server.proc.poll()
        if code is not None:
            log.error("TorchServe exited on its own with code %d:\n%s", code, server.log_tail())
            return 1
        if admin is not None and not admin.running:
            log.error("the admin service stopped on its own (see the log above)")
            return 1
        time.sleep(0.5)


def run_foreground(
    server: TorchServe, ready_timeout: float, admin_settings: AdminSettings | None = None, lock: StateLock | None = None
) -> int:
    """Start TorchServe, wait until ready, start the admin (unless None; ``lock``: its state directory's, held
    by the caller); block until Ctrl-C / SIGTERM or one of them dies; always stop both, the admin first (it
    talks to TorchServe)."""
    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _term)
    admin: AdminServer | None = None
    try:
        server.start()
        server.wait_ready(ready_timeout)
        if admin_settings is not None:
            from admin.server import AdminServer

            # Assigned before start(): a Ctrl-C while it starts still stops it below.
            admin = AdminServer(admin_settings_for(admin_settings, server), lock=lock)
            admin.start()
            _write_endpoints(admin_settings.state_dir, server, admin)
        announce(server, admin)
        return _watch(server, admin)
    except KeyboardInterrupt:
        log.info("stopping")
        return 0
    finally:
        # A second Ctrl-C / SIGTERM must not interrupt the stop half-way and orphan the workers.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if admin is not None:
                admin.stop()
                (admin.settings.state_dir / ENDPOINTS_FILE).unlink(missing_ok=True)
        finally:
            server.stop()
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, sigint)


def serve(args: argparse.Namespace) -> int:
    # Everything that can be refused without TorchServe is refused before it starts: the token, the port,
    # which model the admin manages, and what the store holds.
    from admin.server import settings_from_args
    from admin.statelock import StateLock
    from graft.serve_plan import plan_with_admin, plan_without_admin

    apply_port_base(args)
    if args.runtime == "kserve":
        from graft.serve_kserve import serve_kserve

        return serve_kserve(args)
    run_dir = Path(args.run_dir) if args.run_dir else None
    if run_dir is not None:
        read_card(run_dir)  # a missing or wrong run folder is refused before a state folder or token is made
    if args.no_admin:
        check_torchserve_ports(args, Path(args.workdir) if args.workdir else None)
        served = plan_without_admin(run_dir, args.model_store, settings_from_args(args))
        return run_foreground(TorchServe(config_from_args(args, served, None)), args.ready_timeout)
    settings = admin_preflight(args)
    # Held from before the store is arranged until the admin stops: another admin on this state directory would
    # move archives under this one's TorchServe, and fail this one's jobs when it starts.
    with StateLock(settings.state_dir) as lock:
        check_torchserve_ports(args, Path(args.workdir) if args.workdir else settings.state_dir / "torchserve")
        served = plan_with_admin(run_dir, args.model_store, settings)
        assert served.settings is not None
        # A stable work folder: a restart finds (and stops) what an earlier run left behind, and its stale keys.
        config = config_from_args(args, served, served.settings.state_dir / "torchserve")
        return run_foreground(TorchServe(config), args.ready_timeout, served.settings, lock)


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name, "").strip()
    try:
        return float(raw) if raw else None
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None


def register(sub: Any) -> None:
    from admin.server import add_admin_arguments

    p = sub.add_parser("serve", help="serve a run folder or a model store with TorchServe, and the admin beside it",
                       description="Start TorchServe with graft's configuration, then the admin service (unless "
                                   "--no-admin); Ctrl-C stops everything.", allow_abbrev=False)
    p.add_argument("run_dir", nargs="?", help="a run folder (graft train's output): exported into "
                                              "STATE_DIR/model-store on the first start and served")
    p.add_argument("--model-store", help="folder of NAME-VERSION.mar archives (default with a run folder: "
                                         "STATE_DIR/model-store)")
    p.add_argument("--runtime", choices=("torchserve", "kserve"), default=os.environ.get("GRAFT_RUNTIME", "torchserve"),
                   help="torchserve (default), or kserve: graft's handler on KServe's model server (v1, OIP v2 "
                        "REST and gRPC, no Java; docs/kserve.md)")
    p.add_argument("--kserve-http-port", type=int, default=8085, help="--runtime kserve: v1, v2 and metrics port")
    p.add_argument("--kserve-grpc-port", type=int, default=8086, help="--runtime kserve: OIP v2 gRPC port (0: off)")
    a = p.add_argument_group("addresses (--port-base N sets them all: N..N+4 for TorchServe, N+10 for the admin)")
    a.add_argument("--port-base", type=int, metavar="N",
                   help="inference N, management N+1, metrics N+2, gRPC N+3 and N+4, admin N+10; a flag below "
                        "given explicitly wins")  # fmt: skip
    a.add_argument("--inference-address", help="TorchServe's inference API: POST /predictions/NAME "
                                               "(default http://127.0.0.1:8080)")  # fmt: skip
    a.add_argument("--management-address", help="TorchServe's management API: models, versions, workers; the "
                                                "admin calls it (default http://127.0.0.1:8081)")  # fmt: skip
    a.add_argument("--metrics-address", help="Prometheus metrics at /metrics (default http://127.0.0.1:8082)")
    a.add_argument("--grpc-inference-port", type=int, help="TorchServe's gRPC inference port on 127.0.0.1 "
                                                           "(default 7070)")  # fmt: skip
    a.add_argument("--grpc-management-port", type=int, help="TorchServe's gRPC management port on 127.0.0.1 "
                                                            "(default 7071)")  # fmt: skip
    p.add_argument("--workdir", help="where config, logs and key_file.json go (default: STATE_DIR/torchserve; "
                                     "with --no-admin a new temporary folder)")
    p.add_argument("--ts-config", help="properties file merged into TorchServe's config.properties "
                                       "(workers, queues, timeouts...; graft's own keys are refused)")
    p.add_argument("--no-auth", action="store_true", help="turn token authorization off (local experiments only)")
    p.add_argument("--token-expiration-min", type=int, default=60,
                   help="minutes TorchServe's inference and management keys live before renewal (default 60)")
    p.add_argument("--ready-timeout", type=float, default=300, help="seconds to wait for every model's workers")
    p.add_argument("--no-admin", action="store_true", help="TorchServe only, without the admin service")
    p.add_argument("--capture-rate", type=float, default=_env_float("GRAFT_CAPTURE_RATE"),
                   help="keep this share of served inputs (0..1) with the model's answers for the admin's review "
                        "queue, replay and drift (default: GRAFT_CAPTURE_RATE, else off)")
    p.add_argument("--capture-budget-mb", type=int, help="disk the captures may use (default 1024); the oldest "
                                                         "go first")
    add_admin_arguments(p)
    p.set_defaults(func=serve)
