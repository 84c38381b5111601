"""MkDocs hook: the reference pages are generated from the code at build time, so they cannot go stale.

A page writes a marker such as ``<!-- graft:cli -->`` and the hook replaces it with Markdown built from
the thing itself: the CLI from ``graft.cli.build_parser()``, the admin API from the routers' OpenAPI
schema, the settings from ``admin.settings.AdminSettings``. The tests (``tests/docs``) call the same
functions, so what they check is what the site shows.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import inspect
import io
import pkgutil
import re
import sys
import textwrap
import tokenize
from pathlib import Path
from typing import Any

MARKERS = ("cli", "api", "settings")


# --- the CLI ---------------------------------------------------------------------------------------------


def _cell(text: object) -> str:
    """One Markdown table cell: no line breaks, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _option_row(action: argparse.Action) -> str:
    names = ", ".join(f"`{n}`" for n in action.option_strings) or f"`{action.metavar or action.dest}`"
    if action.option_strings and action.nargs != 0:
        metavar = action.metavar or (
            "{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.dest.upper()
        )
        names += f" `{_cell(metavar)}`"
    default = action.default
    shown = "" if default in (None, False, argparse.SUPPRESS) or action.nargs == 0 else f"`{_cell(default)}`"
    help_text = "" if action.help in (None, argparse.SUPPRESS) else str(action.help)
    if "%(" in help_text:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            help_text = help_text % {**vars(action), "prog": ""}
    return f"| {names} | {shown} | {_cell(help_text)} |"


def command_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The arguments a command documents: everything but ``--help`` and the subcommand table."""
    return [
        a
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and a.help is not argparse.SUPPRESS
    ]


def cli_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """Every command of ``graft`` with its usage, description and a table of its arguments."""
    if parser is None:
        from graft.cli import build_parser

        parser = build_parser()
    out = [f"```\n{parser.format_usage().strip()}\n```\n", _options_table(parser)]
    for name, sub in _subparsers(parser).items():
        out.append(f"## `graft {name}`\n")
        if sub.description:
            out.append(textwrap.dedent(sub.description).strip() + "\n")
        out.append(f"```\n{sub.format_usage().strip()}\n```\n")
        out.append(_options_table(sub))
    return "\n".join(out)


def _options_table(parser: argparse.ArgumentParser) -> str:
    rows = [_option_row(a) for a in command_options(parser)]
    if not rows:
        return ""
    return "| argument | default | meaning |\n|---|---|---|\n" + "\n".join(rows) + "\n"


# --- the admin API ---------------------------------------------------------------------------------------


def openapi_schema() -> dict[str, Any]:
    """The admin API's OpenAPI schema, from every router in ``admin.api`` (no service is started).

    The running app serves the same schema at ``/openapi.json`` when ``GRAFT_API_DOCS=true``; building it
    from the routers avoids opening a state folder and a database just to describe the routes.
    """
    from fastapi import APIRouter, FastAPI

    import admin.api
    from graft import __version__

    app = FastAPI(title="graft admin", version=__version__)
    for info in sorted(pkgutil.iter_modules(admin.api.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"admin.api.{info.name}")
        router = getattr(module, "router", None)
        if isinstance(router, APIRouter):
            app.include_router(router)
    return app.openapi()


def api_reference(schema: dict[str, Any] | None = None) -> str:
    """One section per tag, one row per route: method, path, summary, parameters, request body."""
    schema = schema or openapi_schema()
    by_tag: dict[str, list[str]] = {}
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            tag = (op.get("tags") or ["other"])[0]
            params = ", ".join(
                f"`{p['name']}`" + ("" if p.get("required") else "?") for p in op.get("parameters", [])
            )
            body = ", ".join(f"`{t}`" for t in (op.get("requestBody", {}).get("content") or {}))
            codes = ", ".join(sorted(op.get("responses", {})))
            summary = (op.get("description") or op.get("summary") or "").strip().split("\n\n")[0]
            by_tag.setdefault(tag, []).append(
                f"| `{method.upper()}` | `{path}` | {_cell(summary)} | {params} | {body} | {codes} |"
            )
    out = []
    for tag in sorted(by_tag):
        out.append(f"## {tag}\n")
        out.append("| method | path | what | parameters (`?` optional) | body | statuses |")
        out.append("|---|---|---|---|---|---|")
        out.extend(by_tag[tag])
        out.append("")
    return "\n".join(out)


def api_routes(schema: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(METHOD, path) of every route in the schema: what the reference must list."""
    schema = schema or openapi_schema()
    return [
        (method.upper(), path)
        for path, item in schema.get("paths", {}).items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    ]


# --- the settings ----------------------------------------------------------------------------------------


def _field_comments(cls: type) -> dict[str, str]:
    """The comments the settings class keeps beside its fields: on the field's line, or just above it."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}  # whole-line comments
    trailing: dict[int, str] = {}  # comments after code on the same line
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            (comments if tok.line.strip().startswith("#") else trailing)[tok.start[0]] = text
    found: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above: list[str] = []
            line = node.lineno - 1
            while line in comments and not comments[line].startswith("---"):
                above.insert(0, comments[line])
                line -= 1
            last = node.end_lineno or node.lineno
            parts = above + ([trailing[last]] if last in trailing else [])
            found[node.target.id] = " ".join(parts)
    return found


def settings_reference(cls: type | None = None) -> str:
    """Every field of the admin's settings: its ``GRAFT_*`` variable, type, default and what it does."""
    if cls is None:
        from admin.settings import AdminSettings

        cls = AdminSettings
    prefix = cls.model_config.get("env_prefix", "")  # type: ignore[attr-defined]
    comments = _field_comments(cls)
    rows = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    for name, field in cls.model_fields.items():  # type: ignore[attr-defined]
        default = field.get_default(call_default_factory=True)
        shown = "" if default is None else f"`{_cell(default)}`"
        kind = _cell(re.sub(r"\b[a-z_]+\.", "", getattr(field.annotation, "__name__", None) or str(field.annotation)))
        rows.append(f"| `{(prefix + name).upper()}` | {kind} | {shown} | {_cell(comments.get(name, ''))} |")
    return "\n".join(rows) + "\n"


# --- the hook --------------------------------------------------------------------------------------------


def render(marker: str) -> str:
    if marker == "cli":
        return cli_reference()
    if marker == "api":
        return api_reference()
    return settings_reference()


def on_config(config: Any) -> Any:
    # The checkout being built, not whatever an installed copy of graft points at.
    root = str(Path(config["config_file_path"]).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    for marker in MARKERS:
        tag = f"<!-- graft:{marker} -->"
        if tag in markdown:
            markdown = markdown.replace(tag, render(marker))
    return markdown
