"""The ``graft`` command: parses arguments and calls library functions, nothing more.

Each subsystem registers its own subcommands (``register(subparsers)``) so this file stays a table.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from graft import __version__
from graft.core.errors import GraftError

# Modules that contribute subcommands; imported when the parser is built, not at import time.
_COMMAND_MODULES = ("training.cli", "graft.serve", "admin.cli", "graft.demo", "graft.client.cli")

DESCRIPTION = (
    "graft: fine-tune an image classifier on your folders, serve it with TorchServe, and keep improving it: "
    "collect labelled samples, retrain, and let a gate decide whether the new model goes into service."
)
EPILOG = (
    "The loop: graft train --data DIR --output runs/NAME; graft serve runs/NAME --dev-token; graft upload NEW_DIR; "
    "graft retrain --wait; graft predict IMAGE. 'graft COMMAND --help' says more about each command."
)

log = logging.getLogger("graft")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graft", description=DESCRIPTION, epilog=EPILOG, allow_abbrev=False
    )
    parser.add_argument("--version", action="version", version=f"graft {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # httpx logs every request at INFO: graft serve's readiness polling and the admin's TorchServe calls
    # would bury the lines that matter.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit: a reader that went away is handled below
        return status
    except BrokenPipeError:
        return _reader_gone()
    except GraftError as e:
        # Domain errors are the user's to fix: one clear line, no traceback.
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:
        return 130


def _reader_gone() -> int:
    """``graft backbones | head``: the reader closed the pipe after what it wanted; not an error."""
    # Python would flush stdout again at exit and report the same broken pipe; point it at /dev/null.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0


if __name__ == "__main__":
    sys.exit(main())
