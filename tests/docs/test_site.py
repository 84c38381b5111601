"""The docs site builds strictly (a broken link or anchor fails), and its generated reference pages are
built from the code itself, so they list every command, option, route and setting."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from graft.cli import build_parser
from tests.support.paths import REPO

requires_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
    reason="mkdocs / mkdocs-material not installed: pip install -e '.[docs]' (make setup does)",
)


@requires_mkdocs
def test_site_builds_strictly_offline(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cli = (tmp_path / "reference" / "cli" / "index.html").read_text()
    assert "graft train" in cli and "--admin-state-dir" in cli  # the hook ran: the marker became the reference
    assert "graft:cli" not in cli
    settings = (tmp_path / "reference" / "settings" / "index.html").read_text()
    assert "GRAFT_HOLDOUT_FRACTION" in settings and "graft:settings" not in settings


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("graft has no subcommands")


def test_cli_reference_lists_every_command_and_option(reference: ModuleType) -> None:
    parser = build_parser()
    text = reference.cli_reference(parser)
    sections = re.split(r"^## `graft ([a-z-]+)`$", text, flags=re.M)
    by_command = dict(zip(sections[1::2], sections[2::2], strict=True))
    assert set(by_command) == set(_subcommands(parser))
    for name, sub in _subcommands(parser).items():
        for action in reference.command_options(sub):
            for flag in action.option_strings or [action.metavar or action.dest]:
                assert f"`{flag}`" in by_command[name], f"graft {name}: {flag} missing from the CLI reference"
    assert "`--verbose`" in sections[0]


def test_cli_reference_fails_for_an_option_it_does_not_list(reference: ModuleType) -> None:
    """The check above can fail: a parser with an option the reference was not built from."""
    parser = build_parser()
    text = reference.cli_reference(parser)
    _subcommands(parser)["check"].add_argument("--not-documented", help="new")
    assert "`--not-documented`" not in text
    assert "`--not-documented`" in reference.cli_reference(parser)


def test_settings_reference_lists_every_setting(reference: ModuleType) -> None:
    from admin.settings import AdminSettings

    text = reference.settings_reference()
    for name in AdminSettings.model_fields:
        assert f"`GRAFT_{name.upper()}`" in text
    row = next(line for line in text.splitlines() if "`GRAFT_DB_DIR`" in line)
    assert "WAL" in row  # the comment beside the field became its meaning


def test_api_reference_lists_every_route(reference: ModuleType) -> None:
    schema = reference.openapi_schema()
    routes = reference.api_routes(schema)
    assert ("POST", "/v1/retrain") in routes and ("POST", "/v1/samples") in routes
    text = reference.api_reference(schema)
    for method, path in routes:
        assert f"| `{method}` | `{path}` |" in text
