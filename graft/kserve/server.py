"""The KServe runtime's process: ``python -m graft.kserve.server --model-store DIR`` (``graft serve
--runtime kserve`` starts it; the container runs it as its KServe predictor command).

KServe's ModelServer serves REST (v1, v2) on ``--http-port``; the gRPC server (OIP v2) is built here
rather than by ModelServer so that it carries graft's token check and graft's error statuses.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from graft.core.errors import ConfigError

log = logging.getLogger("graft.kserve")

READY_LINE = "graft kserve runtime ready"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m graft.kserve.server", allow_abbrev=False,
                                description="graft's handler on KServe's model server (v1, OIP v2 REST and gRPC)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-store", help="folder of NAME-VERSION.mar archives: every one is loaded")
    src.add_argument("--archive", help="one .mar or unpacked archive folder")
    p.add_argument("--default", action="append", default=[], metavar="NAME=VERSION",
                   help="the version that answers NAME (default: the newest)")
    p.add_argument("--only", action="append", default=[], metavar="NAME=V1,V2",
                   help="load only these versions of NAME (the admin's keep set)")
    p.add_argument("--http-port", type=int, default=int(os.environ.get("GRAFT_KSERVE_HTTP_PORT", "8080")))
    p.add_argument("--grpc-port", type=int, default=int(os.environ.get("GRAFT_KSERVE_GRPC_PORT", "8081")),
                   help="OIP v2 gRPC port; 0 turns gRPC off")
    p.add_argument("--grpc-host", default="[::]")
    p.add_argument("--key-file", help="JSON key file (TorchServe's key_file.json shape); made when missing. "
                                      "Default: GRAFT_KSERVE_KEY_FILE, else WORKDIR/key_file.json")
    p.add_argument("--no-auth", action="store_true", help="no tokens (local experiments only)")
    p.add_argument("--workdir", help="where archives are unpacked and keys kept (default: a new temporary folder)")
    p.add_argument("--max-request-mb", type=int, default=64, help="largest request body accepted")
    p.add_argument("--queue-size", type=int, default=100, help="requests waiting per version before 503s")
    return p.parse_args(argv)


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, value = v.partition("=")
        if not sep or not name or not value:
            raise ConfigError(f"{what} {v!r}: write NAME=VALUE")
        out[name] = value
    return out


def _import_kserve() -> Any:
    """kserve parses sys.argv when its model_server module is imported: hide ours from it."""
    saved = sys.argv
    sys.argv = [saved[0]]
    try:
        import kserve
        import kserve.model_server
    finally:
        sys.argv = saved
    return kserve


def grpc_server(port: int, host: str, dataplane: Any, extension: Any, keys: Any, max_threads: int = 4) -> Any:
    """The OIP v2 gRPC server with graft's interceptors: token check, graft's statuses, then KServe's mapping."""
    from concurrent import futures

    import grpc
    from grpc import aio
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
    from kserve.protocol.grpc.servicer import InferenceServicer

    from graft.kserve.errors import ServedError
    from graft.kserve.security import grpc_auth_interceptor

    class Errors(ExceptionToStatusInterceptor):  # type: ignore[misc]
        async def handle_exception(self, ex: Exception, request_or_iterator: Any, context: Any, method_name: str
                                   ) -> None:  # fmt: skip
            if isinstance(ex, ServedError):
                reason = ex.body.get("reason", "")
                await context.abort(getattr(grpc.StatusCode, ex.grpc_code), f"{ex.status} {reason}: {ex}")
            await super().handle_exception(ex, request_or_iterator, context, method_name)

    class Server:
        def __init__(self) -> None:
            self._server: Any = None

        async def start(self) -> None:
            interceptors = ([grpc_auth_interceptor(keys)] if keys is not None else []) + [Errors()]
            max_len = 64 * 2**20
            self._server = aio.server(futures.ThreadPoolExecutor(max_workers=max_threads), interceptors=interceptors,
                                      options=[("grpc.max_send_message_length", max_len),
                                               ("grpc.max_receive_message_length", max_len)])  # fmt: skip
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
                InferenceServicer(dataplane, extension), self._server)
            self._server.add_insecure_port(f"{host}:{port}")
            await self._server.start()
            log.info("OIP v2 gRPC on %s:%d", host, port)
            await self._server.wait_for_termination()

        async def stop(self, sig: int | None = None) -> None:
            if self._server is not None:
                await self._server.stop(grace=5)

    return Server()


def build(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """The configured ModelServer and its models (loaded), ready for ``start``."""
    kserve = _import_kserve()
    from kserve.model_repository import ModelRepository
    from kserve.model_server import app

    from graft.core.errors import GraftError
    from graft.kserve.errors import ServedError
    from graft.kserve.model import GraftModel
    from graft.kserve.routes import (
        VersionPathMiddleware,
        graft_error_handler,
        management_router,
        served_error_handler,
        v2_infer_router,
    )
    from graft.kserve.security import GuardMiddleware, load_or_create_keys
    from graft.kserve.versions import VersionSet
    from graft.torchserve.pins import DEFAULTS_ENV, parse_defaults

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="graft-kserve-"))
    keys = None
    if not args.no_auth:
        key_file = Path(args.key_file or os.environ.get("GRAFT_KSERVE_KEY_FILE") or workdir / "key_file.json")
        keys = load_or_create_keys(key_file)
        log.info("keys in %s: send 'Authorization: Bearer <inference.key>' (management.key for /graft/)", key_file)
    repository = ModelRepository()
    versions = VersionSet(Path(args.model_store or "."), workdir / "models", repository, GraftModel, args.queue_size)
    if args.archive:
        versions.load_folder(Path(args.archive))
    else:
        only = {n: v.split(",") for n, v in _pairs(args.only, "--only").items()}
        # GRAFT_DEFAULT_VERSIONS: what the admin's Kubernetes rollout writes into the pods (as for TorchServe).
        pins = _pairs(args.default, "--default") or parse_defaults(os.environ.get(DEFAULTS_ENV))
        versions.load_store(pins, only)
    app.include_router(management_router(versions))
    app.add_exception_handler(ServedError, served_error_handler)
    app.add_exception_handler(GraftError, graft_error_handler)
    # Added first = innermost: the guard (outermost) refuses before the rewrite or anything else runs.
    app.add_middleware(VersionPathMiddleware)
    app.add_middleware(GuardMiddleware, keys=keys, max_bytes=args.max_request_mb * 2**20)
    server = kserve.ModelServer(http_port=args.http_port, enable_grpc=False, registered_models=repository,
                                enable_latency_logging=False)  # fmt: skip
    app.include_router(v2_infer_router(server.dataplane))  # before KServe's routes: the first match wins
    if args.grpc_port:
        grpc = grpc_server(args.grpc_port, args.grpc_host, server.dataplane, server.model_repository_extension, keys)
        server.servers.append(grpc.start())
        server._grpc_server = grpc  # ModelServer.stop() stops it on SIGTERM
    return server, list(repository.get_models().values())


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        server, models = build(args)
    except Exception as e:
        log.error("%s", e)
        return 2
    names = sorted(m.name for m in models)
    log.info("%s: http :%d (v1, OIP v2), grpc %s; models %s", READY_LINE, args.http_port,
             f":{args.grpc_port}" if args.grpc_port else "off", json.dumps(names))  # fmt: skip
    server.start(models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
