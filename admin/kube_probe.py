"""Exec probes for an inference pod: ``python -m admin.kube_probe ready|live``.

TorchServe's ``/ping`` says "Healthy" before a model's workers have loaded it, so readiness asks the
management API whether every registered model has a worker in state ``READY``, after ``/ping``
answered 200, and whether each model pinned in ``GRAFT_DEFAULT_VERSIONS`` already has its pinned
version as the default (``graft serve`` switches the default only after loading every archive).

Liveness only asks whether the frontend answers ``/ping`` at all: a worker that crashes is
restarted by TorchServe itself, and restarting the pod for it would only add downtime.

Standard library only (it runs every few seconds); on Kubernetes TorchServe runs without tokens
(see README.md, "Deploy to Kubernetes"), so no key is sent. Exit 0 = pass, 1 = fail, with the reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from admin.kube_pins import DEFAULTS_ENV, parse_defaults

log = logging.getLogger("graft.probe")


def _get(url: str, timeout: float) -> tuple[int, Any]:
    """(status, parsed JSON body or None); raises OSError when nothing answers."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            raw = r.read()
            status = int(r.status)
    except urllib.error.HTTPError as e:
        return e.code, None
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def live_problem(inference: str, timeout: float) -> str | None:
    """None when the frontend answers ``/ping`` with any HTTP status."""
    try:
        _get(f"{inference}/ping", timeout)
    except OSError as e:
        return f"TorchServe does not answer {inference}/ping: {e}"
    return None


def _model_problem(management: str, name: str, pinned: str | None, timeout: float) -> str | None:
    # Describing a model without a version describes its default version.
    status, versions = _get(f"{management}/models/{urllib.parse.quote(name, safe='')}", timeout)
    if status != 200 or not isinstance(versions, list):
        return f"describing model {name} answered {status}"
    served = {str(v.get("modelVersion")) for v in versions if isinstance(v, dict)}
    if pinned is not None and served != {pinned}:
        return f"model {name}: default version is {sorted(served)}, not the pinned {pinned} yet"
    workers = [w for v in versions if isinstance(v, dict) for w in v.get("workers") or []]
    if not any(isinstance(w, dict) and w.get("status") == "READY" for w in workers):
        return f"model {name} has no READY worker yet ({len(workers)} worker(s))"
    return None


def ready_problem(inference: str, management: str, timeout: float, pins: dict[str, str] | None = None) -> str | None:
    """None when ``/ping`` is 200 and every model's default version is the pinned one, with a READY worker."""
    pins = pins or {}
    try:
        status, _ = _get(f"{inference}/ping", timeout)
        if status != 200:
            return f"{inference}/ping answered {status}"
        status, listing = _get(f"{management}/models?limit=1000", timeout)
        if status != 200 or not isinstance(listing, dict):
            return f"{management}/models answered {status}"
        names = [m.get("modelName") for m in listing.get("models") or [] if isinstance(m, dict)]
        if not names:
            return "no model is registered (is there a .mar in the model store?)"
        missing = sorted(set(pins) - {str(n) for n in names})
        if missing:
            return f"pinned model(s) {missing} not registered"
        for name in names:
            problem = _model_problem(management, str(name), pins.get(str(name)), timeout)
            if problem:
                return problem
    except OSError as e:
        return f"TorchServe does not answer: {e}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m admin.kube_probe", description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=("ready", "live"))
    parser.add_argument("--inference", default="http://127.0.0.1:8080")
    parser.add_argument("--management", default="http://127.0.0.1:8081")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    inference, management = args.inference.rstrip("/"), args.management.rstrip("/")
    if args.check == "live":
        problem = live_problem(inference, args.timeout)
    else:
        problem = ready_problem(inference, management, args.timeout, parse_defaults(os.environ.get(DEFAULTS_ENV)))
    if problem:
        log.warning("%s: %s", args.check, problem)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
