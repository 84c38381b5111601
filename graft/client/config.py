"""Where the admin is and which token to send: arguments, then the environment, then a state folder.

``graft serve`` keeps its state in one folder (``--admin-state-dir``, ``GRAFT_STATE_DIR``, default
``runs/admin``): ``admin.token`` when it generated a development token, ``torchserve/`` (TorchServe's
``config.properties`` and ``key_file.json``) and ``endpoints.json``, the addresses it serves on, written once
everything is up. The client reads them, so on the machine that serves nothing needs configuring.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.core.errors import ConfigError

DEFAULT_URL = "http://127.0.0.1:8090"
DEFAULT_STATE_DIR = Path("runs/admin")
TOKEN_FILE = "admin.token"  # admin/settings.py DEV_TOKEN_FILE; the client does not import the admin
ENDPOINTS_FILE = "endpoints.json"


@dataclass(frozen=True)
class Endpoint:
    url: str
    token: str | None
    state_dir: Path
    token_source: str  # for messages: where the token came from


def state_dir_of(state_dir: str | Path | None, env: Mapping[str, str]) -> Path:
    return Path(state_dir or env.get("GRAFT_STATE_DIR") or DEFAULT_STATE_DIR)


def read_endpoints(state_dir: Path) -> dict[str, Any]:
    """``STATE_DIR/endpoints.json`` as ``graft serve`` wrote it; empty when there is none."""
    try:
        doc = json.loads((state_dir / ENDPOINTS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def write_endpoints(state_dir: Path, endpoints: Mapping[str, Any]) -> Path:
    """Written by ``graft serve`` once it serves (addresses and the key file's path, no secret)."""
    path = Path(state_dir) / ENDPOINTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(endpoints), indent=2) + "\n")
    tmp.replace(path)
    return path


def _read_token(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def resolve(
    url: str | None = None,
    token: str | None = None,
    state_dir: str | Path | None = None,
    token_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Endpoint:
    """URL: ``url``, ``GRAFT_URL``, the state folder's ``endpoints.json``, else :data:`DEFAULT_URL`.
    Token: ``token``, ``token_file``, ``GRAFT_TOKEN``, ``GRAFT_ADMIN_TOKEN``, else the state folder's
    ``admin.token`` (None when there is none: the server will say 401)."""
    env = os.environ if env is None else env
    folder = state_dir_of(state_dir, env)
    served = read_endpoints(folder)
    resolved_url = url or env.get("GRAFT_URL") or served.get("admin_url") or DEFAULT_URL
    if token:
        return Endpoint(resolved_url.rstrip("/"), token, folder, "argument")
    candidates: list[tuple[str | None, str]] = []
    if token_file:
        if _read_token(Path(token_file)) is None:
            raise ConfigError(f"no token in {token_file}: give a file holding the admin token")
        candidates.append((_read_token(Path(token_file)), str(token_file)))
    candidates += [(env.get("GRAFT_TOKEN"), "GRAFT_TOKEN"), (env.get("GRAFT_ADMIN_TOKEN"), "GRAFT_ADMIN_TOKEN"),
                   (_read_token(folder / TOKEN_FILE), str(folder / TOKEN_FILE))]  # fmt: skip
    for value, source in candidates:
        if value and value.strip():
            return Endpoint(resolved_url.rstrip("/"), value.strip(), folder, source)
    return Endpoint(resolved_url.rstrip("/"), None, folder, "none")
