"""``graft admin``: the control plane on its own, talking to a TorchServe that runs elsewhere; ``graft job-eval``:
the gate's predictions inside a training Job (admin/domain/job_evaluation.py).

(``graft serve`` starts it beside TorchServe through :mod:`admin.launch`.)
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    from admin.server import add_admin_arguments

    p = sub.add_parser(
        "admin", help="run the admin service (samples, retraining, gated promotion)", allow_abbrev=False
    )
    add_admin_arguments(p)
    p.add_argument("--model-store", type=Path, help="TorchServe's model store, where .mar files are written")
    p.add_argument("--torchserve-management", help="management API URL (default http://127.0.0.1:8081)")
    p.add_argument("--torchserve-inference", help="inference API URL (default http://127.0.0.1:8080)")
    p.add_argument(
        "--torchserve-key-file", type=Path, help="TorchServe's key_file.json (omit if it runs without tokens)"
    )
    p.add_argument("--no-rollout", action="store_true", help="registry only: do not drive TorchServe")
    p.set_defaults(func=run)
    e = sub.add_parser(
        "job-eval",
        help="in a training Job: the gate's predictions the admin asked for (JOB_DIR/job-eval/request.json)",
        allow_abbrev=False,
    )
    e.add_argument("request", type=Path, help="the request the admin wrote before submitting the Job")
    e.set_defaults(func=job_eval)


def job_eval(args: argparse.Namespace) -> int:
    from admin.domain.job_evaluation import run_request

    return run_request(args.request)


def run(args: argparse.Namespace) -> int:
    from admin.server import AdminServer, settings_from_args

    settings = settings_from_args(
        args,
        model_store=args.model_store,
        torchserve_management_url=args.torchserve_management,
        torchserve_inference_url=args.torchserve_inference,
        torchserve_key_file=args.torchserve_key_file,
        rollout="none" if args.no_rollout else None,
    )
    server = AdminServer(settings).start()
    signal.signal(signal.SIGTERM, _interrupt)  # a container stop is a clean stop, like Ctrl-C
    server.wait()
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
