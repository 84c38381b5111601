"""``GRAFT_DEFAULT_VERSIONS``: the default version of each model, pinned in the inference pod template.

Format ``name=version[,name=version...]``. The admin's Kubernetes rollout writes it; ``graft serve``
makes those versions the defaults; the readiness probe waits until they are. Standard library only.
"""

from __future__ import annotations

DEFAULTS_ENV = "GRAFT_DEFAULT_VERSIONS"


def parse_defaults(value: str | None) -> dict[str, str]:
    pins: dict[str, str] = {}
    for item in (value or "").split(","):
        name, sep, version = item.strip().partition("=")
        if sep and name.strip() and version.strip():
            pins[name.strip()] = version.strip()
    return pins


def format_defaults(pins: dict[str, str]) -> str:
    return ",".join(f"{name}={pins[name]}" for name in sorted(pins))
