"""TorchServe's ``config.properties`` as graft writes it, and the keys a user may add (``--ts-config``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from graft.core.errors import ServeError
from graft.torchserve.store import Archive

if TYPE_CHECKING:
    from graft.torchserve.launcher import ServeConfig


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


def host_port(address: str) -> tuple[str, int]:
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


def read_properties(path: Path) -> dict[str, str]:
    """The keys of a Java properties file (``key=value``, ``key: value`` or ``key value``; ``#``/``!``
    comments; a trailing backslash continues a line), refused when one is graft's own."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ServeError(f"cannot read the TorchServe configuration {path}: {e}") from e
    props: dict[str, str] = {}
    for line in re.sub(r"\\\r?\n[ \t\f]*", "", text).splitlines():
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        m = re.match(r"([^=:\s]+)\s*[=:]?\s*(.*)", line)
        if m is None:  # a line starting with a separator: no key
            raise ServeError(f"{path}: cannot read the line {line!r} (expected key=value)")
        props[m.group(1)] = m.group(2)
    try:
        check_extra_properties(props)
    except ServeError as e:
        raise ServeError(f"{path}: {e}") from e
    return props
