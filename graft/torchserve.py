"""TorchServe, configured and run by graft: the launcher library (``graft serve`` is graft/serving.py).

:class:`TorchServe` writes ``config.properties`` into its own work folder (local addresses, token
authorization, ``allowed_urls`` limited to the store, Prometheus metrics with the handler's declared),
starts the Java frontend in its own process group, waits until every archive's workers are READY, makes
the pinned (else the newest) version of each model the default, and stops the whole tree. It runs ``java``
as ``torchserve`` would, minus its global pid file in /tmp (one TorchServe per machine), with a private
``java.io.tmpdir`` so the workers' Unix sockets (``.ts.sock.<port>``) of two instances cannot collide.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from graft.errors import ServeError

log = logging.getLogger(__name__)

KEY_FILE = "key_file.json"


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
    # Pinned default version per model (``GRAFT_DEFAULT_VERSIONS``); unpinned models get their newest.
    default_versions: dict[str, str] = field(default_factory=dict)

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


@dataclass(frozen=True)
class Archive:
    path: Path
    name: str
    version: str


@dataclass(frozen=True)
class TokenKeys:
    inference: str
    management: str
    api: str


def version_key(version: str) -> tuple[Any, ...]:
    """Natural order: "10" after "9", "1.10" after "1.9"; numbers before words at the same position."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-_+]", version))


def scan_store(store: Path) -> list[Archive]:
    """Every ``.mar`` in the store with the model name and version from its manifest."""
    out = []
    for path in sorted(Path(store).glob("*.mar")):
        try:
            with zipfile.ZipFile(path) as z:
                model = json.loads(z.read("MAR-INF/MANIFEST.json"))["model"]
            out.append(Archive(path, str(model["modelName"]), str(model.get("modelVersion", "1.0"))))
        except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
            log.warning("skipping %s: not a readable model archive (%s)", path.name, e)
    return out


def latest_versions(archives: list[Archive]) -> dict[str, str]:
    latest: dict[str, str] = {}
    for a in archives:
        if a.name not in latest or version_key(a.version) > version_key(latest[a.name]):
            latest[a.name] = a.version
    return latest


def default_versions(archives: list[Archive], pins: dict[str, str]) -> dict[str, str]:
    """Each model's default version: the pinned one where pinned, else its newest."""
    present = {(a.name, a.version) for a in archives}
    if missing := sorted(f"{name}={version}" for name, version in pins.items() if (name, version) not in present):
        raise ServeError(f"pinned default versions not in the model store: {', '.join(missing)}")
    return {**latest_versions(archives), **pins}


# What graft decides: addresses, the store, what may be loaded or fetched, token authorization, metrics,
# no pip installs, no environment overriding the file, no command run for system metrics. Extra
# properties may tune TorchServe (workers, queues, timeouts, TLS) or narrow it (enable_model_api=false).
PROTECTED_PROPERTIES = frozenset({
    "inference_address", "management_address", "metrics_address", "grpc_inference_address", "grpc_inference_port",
    "grpc_management_address", "grpc_management_port", "model_store", "load_models", "model_snapshot",
    "workflow_store", "allowed_urls", "use_env_allowed_urls", "disable_token_authorization", "token_expiration_min",
    "metrics_mode", "metrics_config", "system_metrics_cmd", "install_py_dep_per_model", "enable_envvars_config",
    "model_server_home",
})  # fmt: skip


def check_extra_properties(props: dict[str, str]) -> None:
    if owned := sorted(k for k in props if k in PROTECTED_PROPERTIES):
        raise ServeError(f"TorchServe properties {', '.join(owned)} are graft serve's own (its flags): remove them")
    # A line break in a value would smuggle in another key, a protected one included.
    if bad := sorted(k for k, v in props.items() if not re.fullmatch(r"[A-Za-z0-9_.\-]+", k) or "\n" in v or "\r" in v):
        raise ServeError(f"malformed TorchServe properties {bad}: keys are [A-Za-z0-9_.-], values one line")


def _host_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
        raise ServeError(f"address {address!r} must look like http://HOST:PORT")
    return parts.hostname, parts.port


def config_properties(cfg: ServeConfig, metrics_config: Path, archives: list[Archive]) -> str:
    store = Path(cfg.model_store).resolve()
    props = {
        "inference_address": cfg.inference_address,
        "management_address": cfg.management_address,
        "metrics_address": cfg.metrics_address,
        "grpc_inference_address": cfg.grpc_address,
        "grpc_inference_port": str(cfg.grpc_inference_port),
        "grpc_management_address": cfg.grpc_address,
        "grpc_management_port": str(cfg.grpc_management_port),
        "model_store": str(store),
        "load_models": ",".join(a.path.name for a in archives),
        # Registration may only name archives inside the store, never fetch from elsewhere.
        "allowed_urls": "file://" + re.escape(str(store)) + r"/[^/]+\.mar",
        "enable_model_api": "true",
        "disable_token_authorization": "false" if cfg.auth else "true",
        "token_expiration_min": str(cfg.token_expiration_min),
        "metrics_mode": "prometheus",
        "metrics_config": str(metrics_config),
        "max_request_size": str(cfg.max_request_bytes),
        # No pip installs from archives, no TS_* environment overriding this file.
        "install_py_dep_per_model": "false",
        "enable_envvars_config": "false",
        **cfg.extra_properties,
    }
    if not archives:
        del props["load_models"]
    return "".join(f"{k}={v}\n" for k, v in props.items())


def read_keys(workdir: Path) -> TokenKeys:
    """The tokens TorchServe wrote to ``WORKDIR/key_file.json``."""
    path = Path(workdir) / KEY_FILE
    try:
        doc = json.loads(path.read_text())
        return TokenKeys(doc["inference"]["key"], doc["management"]["key"], doc["API"]["key"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ServeError(f"cannot read TorchServe keys from {path}: {e}") from e


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _die_with_parent() -> None:  # runs in the child between fork and exec
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


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

    def keys(self) -> TokenKeys | None:
        return read_keys(self.workdir) if self.config.auth else None

    def headers(self, kind: str = "inference") -> dict[str, str]:
        """``Authorization`` for the inference or management API (empty with auth off)."""
        keys = self.keys()
        return {} if keys is None else {"Authorization": f"Bearer {getattr(keys, kind)}"}

    def renew_key(self, kind: str = "management") -> None:
        """Ask for a fresh inference or management key with the API key (TorchServe rewrites key_file.json)."""
        import httpx

        if (keys := self.keys()) is None:
            return
        r = httpx.get(f"{self.management_url}/token", params={"type": kind},
                      headers={"Authorization": f"Bearer {keys.api}"}, timeout=10)
        if r.status_code != 200:
            raise ServeError(f"renewing the {kind} key failed: {r.status_code} {r.text[:200]}")

    def management(self, method: str, path: str, **kwargs: Any) -> Any:
        """A management API call; renews an expired management key once."""
        import httpx

        timeout = kwargs.pop("timeout", 60)  # the retry waits as long as the first call
        for attempt in (0, 1):
            r = httpx.request(method, f"{self.management_url}{path}", headers=self.headers("management"),
                              timeout=timeout, **kwargs)
            if attempt == 1 or not (self.config.auth and r.status_code == 400 and "InvalidKeyException" in r.text):
                return r
            self.renew_key("management")
        raise AssertionError("unreachable")

    # lifecycle
    def prepare(self) -> list[str]:
        """Write config.properties and the metrics config; return the java command line."""
        from handlers.metrics import metrics_config_yaml

        store = Path(self.config.model_store)
        if not store.is_dir():
            raise ServeError(f"model store {store} is not a folder")
        if shutil.which(self.config.java) is None:
            raise ServeError(f"'{self.config.java}' not found: TorchServe's frontend needs a Java 17 runtime")
        self.archives = scan_store(store)
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
        endpoints = [_host_port(a) for a in (c.inference_address, c.management_address, c.metrics_address)]
        endpoints += [(c.grpc_address, c.grpc_inference_port), (c.grpc_address, c.grpc_management_port)]
        busy = [f"{h}:{p}" for h, p in endpoints if port_in_use(h, p)]
        if busy:
            raise ServeError(f"address in use: {', '.join(busy)} (another TorchServe?); choose other addresses/ports")

    def start(self) -> None:
        if self.proc is not None:
            raise ServeError("already started")
        cmd = self.prepare()
        self._check_ports()
        self.key_file.unlink(missing_ok=True)  # never read a previous run's tokens
        if not self.config.auth:
            log.warning("token authorization is OFF (--no-auth): anyone who can reach the ports can use every API")
        out = open(self.workdir / "torchserve.out", "wb")  # noqa: SIM115 - owned by the child from here on
        self.proc = subprocess.Popen(
            cmd, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() signals the whole tree at once
            umask=0o077, preexec_fn=_die_with_parent if self.config.die_with_parent else None,
        )
        out.close()
        self._pgid = self.proc.pid
        log.info("TorchServe starting (pid %d), work folder %s", self.proc.pid, self.workdir)

    def log_tail(self, lines: int = 40) -> str:
        path = self.workdir / "torchserve.out"
        text = path.read_text(errors="replace") if path.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])

    def ready_versions(self) -> set[tuple[str, str]]:
        """(model, version) pairs with at least one READY worker."""
        ready = set()
        r = self.management("GET", "/models", params={"limit": 1000})
        for m in r.json().get("models", []) if r.status_code == 200 else []:
            detail = self.management("GET", f"/models/{m['modelName']}/all")
            for v in detail.json() if detail.status_code == 200 else []:
                if any(w.get("status") == "READY" for w in v.get("workers", [])):
                    ready.add((str(v["modelName"]), str(v["modelVersion"])))
        return ready

    def wait_ready(self, timeout: float = 300) -> None:
        """Wait until every archive's workers are READY, then set each model's default (pinned, else newest)."""
        import httpx

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
                    missing = expected - self.ready_versions()
                    if not missing:
                        break
                except (httpx.TransportError, ValueError, ServeError):  # starting up; key file half-written
                    pass
            if time.monotonic() > deadline:
                raise ServeError(f"not ready after {timeout:.0f}s, waiting for {sorted(missing)}:\n{self.log_tail()}")
            time.sleep(0.5)
        for name, version in sorted(self.defaults.items()):
            r = self.management("PUT", f"/models/{name}/{version}/set-default")
            if r.status_code != 200:
                raise ServeError(f"could not make {name} v{version} the default: {r.status_code} {r.text[:200]}")
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
        left = self.process_tree()
        self.proc = None
        self.key_file.unlink(missing_ok=True)  # tokens are secrets; TorchServe's own --stop removes them too
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

