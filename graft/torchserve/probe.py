"""Exec probes for an inference pod: ``python -m graft.torchserve.probe ready|live``.

TorchServe's ``/ping`` says "Healthy" before a model's workers have loaded it, so readiness asks the
management API whether every registered model has a worker in state ``READY``, after ``/ping``
answered 200, and whether each model already has the default ``graft serve`` gives it: the version
pinned in ``GRAFT_DEFAULT_VERSIONS``, else its newest (``graft serve`` switches the default only after
loading every archive, so workers are READY a moment before the default is right).

Liveness asks whether the frontend answers ``/ping`` at all (a worker that crashes is restarted by
TorchServe itself, and restarting the pod for it would only add downtime), then repairs what a stray
management call could break: a default that drifted from its pin is set back, and a model left with no
worker for its default version (scaled to zero) fails liveness, so the pod restarts and loads it again.

On Kubernetes TorchServe runs without tokens (see README.md, "Deploy to Kubernetes"); ``--key-file``
points at ``key_file.json`` where it runs with them. Exit 0 = pass, 1 = fail, with the reason on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from graft.core.errors import GraftError
from graft.torchserve.client import TorchServeClient, ready_workers
from graft.torchserve.pins import DEFAULTS_ENV, parse_defaults
from graft.torchserve.store import version_key

log = logging.getLogger("graft.probe")


def live_problem(client: TorchServeClient, pins: dict[str, str] | None = None) -> str | None:
    """None when the frontend answers ``/ping`` with any status, every pinned default is (set back to) its
    pin, and no model is left without a worker."""
    try:
        client.ping()
    except GraftError as e:
        return f"TorchServe does not answer {client.inference_url}/ping: {e}"
    try:
        for name, pinned in (pins or {}).items():
            current = client.default_version(name)
            if current is not None and current != pinned and pinned in client.versions(name):
                log.warning("model %s: default drifted to %s; setting the pinned %s back", name, current, pinned)
                client.set_default(name, pinned)
        for name in client.models():
            if not any(v.get("workers") for v in client.describe(name) or []):  # the default version's
                return f"model {name}'s default version has no worker at all (scaled to zero?): restart to load it"
    except GraftError as e:
        return f"TorchServe's management API does not answer as it should: {e}"
    return None


def _model_problem(client: TorchServeClient, name: str, pinned: str | None) -> str | None:
    described = client.describe(name)  # without a version: the default version
    if not described:
        return f"describing model {name} found nothing"
    served = {str(v.get("modelVersion")) for v in described}
    if pinned is not None and served != {pinned}:
        return f"model {name}: default version is {sorted(served)}, not the pinned {pinned} yet"
    newest = max(client.versions(name), key=version_key, default=None) if pinned is None else None
    if newest is not None and served != {newest}:
        return f"model {name}: default version is {sorted(served)}, not the newest {newest} yet"
    if not any(ready_workers(v) for v in described):
        workers = sum(len(v.get("workers") or []) for v in described)
        return f"model {name} has no READY worker yet ({workers} worker(s))"
    return None


def ready_problem(client: TorchServeClient, pins: dict[str, str] | None = None) -> str | None:
    """None when ``/ping`` is 200 and every model's default version is the pinned one, with a READY worker."""
    pins = pins or {}
    try:
        status = client.ping()
        if status != 200:
            return f"{client.inference_url}/ping answered {status}"
        names = client.models()
        if not names:
            return "no model is registered (is there a .mar in the model store?)"
        missing = sorted(set(pins) - set(names))
        if missing:
            return f"pinned model(s) {missing} not registered"
        for name in names:
            problem = _model_problem(client, name, pins.get(name))
            if problem:
                return problem
    except GraftError as e:
        return f"TorchServe does not answer: {e}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m graft.torchserve.probe", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parser.add_argument("check", choices=("ready", "live"))
    parser.add_argument("--inference", default="http://127.0.0.1:8080")
    parser.add_argument("--management", default="http://127.0.0.1:8081")
    parser.add_argument("--key-file", type=Path, help="TorchServe's key_file.json when it runs with tokens")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    with TorchServeClient(args.management, args.inference, args.key_file, timeout_s=args.timeout) as client:
        client.http.timeout = args.timeout
        pins = parse_defaults(os.environ.get(DEFAULTS_ENV))
        problem = live_problem(client, pins) if args.check == "live" else ready_problem(client, pins)
    if problem:
        log.warning("%s: %s", args.check, problem)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
