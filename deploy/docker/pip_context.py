"""Gather what pip's configuration on this machine points at into one folder: the ``pip-config`` build
context of an air-gapped image build (the Dockerfile mounts it read-only at /run/pip-config).

    python3 deploy/docker/pip_context.py DIR
    podman build --build-context pip-config=DIR ...        (deploy/docker/build.sh does both)

``DIR/pip.conf`` is this machine's effective configuration, as ``pip config list`` shows it (the
configuration files, then ``PIP_*`` variables on top), with every local path it names (CA bundle,
client certificate, find-links folders, ``file://`` indexes, constraint files) placed under ``DIR``
and rewritten to its place under /run/pip-config. Files are hard-linked where ``DIR`` is on the same
file system (a local index of several GB costs nothing), copied otherwise. Settings that only make
sense on this machine (cache, log, install locations) are left out.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

MOUNT = Path("/run/pip-config")
_SECTIONS = ("global", "install", "download", ":env:")  # later ones win, as in pip
_DROP = {"cache-dir", "log", "target", "prefix", "root", "user", "src", "require-virtualenv", "no-cache-dir"}
_FILES = {"cert", "client-cert", "constraint"}
_LOCATIONS = {"find-links", "index-url", "extra-index-url"}


def effective_config(python: str = sys.executable) -> dict[str, str]:
    """{option: value} as pip on this machine would use it (``pip config list``, merged)."""
    out = subprocess.run(
        [python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    by_section: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        section, _, option = key.rpartition(".")
        if sep and section in _SECTIONS:
            by_section.setdefault(section, {})[option] = str(ast.literal_eval(value))
    merged: dict[str, str] = {}
    for section in _SECTIONS:
        merged.update(by_section.get(section, {}))
    return {k: v for k, v in merged.items() if k not in _DROP}


class Context:
    """The folder being filled: each local path once, under ``local/N``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.placed: dict[Path, Path] = {}

    def place(self, path: Path) -> Path:
        """Put ``path`` (a file or a folder) into the context; return where the build sees it."""
        path = path.resolve()
        if path not in self.placed:
            rel = Path("local") / str(len(self.placed)) / path.name
            _link_tree(path, self.root / rel)
            self.placed[path] = MOUNT / rel
        return self.placed[path]

    def location(self, value: str) -> str:
        """A find-links entry or an index URL: local ones placed in the context, remote ones kept."""
        url = urlsplit(value)
        if url.scheme in ("http", "https"):
            return value
        path = Path(unquote(url.path)) if url.scheme == "file" else Path(value)
        if not path.exists():
            print(f"pip_context: {value} does not exist here; left out", file=sys.stderr)
            return ""
        # A PEP 503 index folder (.../simple) links to its files beside it: take its parent along.
        simple = path.name == "simple" and path.is_dir()
        placed = self.place(path.parent) / "simple" if simple else self.place(path)
        return placed.as_uri() if url.scheme == "file" else str(placed)


def _link_tree(src: Path, dst: Path) -> None:
    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:  # another file system (or links not allowed): copy
            shutil.copy2(s, d)

    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=link, symlinks=False)
    else:
        link(str(src), str(dst))


def write_context(root: Path, config: dict[str, str]) -> str:
    ctx = Context(root)
    lines = ["# Written by deploy/docker/pip_context.py from this machine's pip configuration.", "[global]"]
    for option, value in sorted(config.items()):
        if option in _FILES:
            value = str(ctx.place(Path(value)))
        elif option in _LOCATIONS:
            value = " ".join(filter(None, (ctx.location(v) for v in value.split())))
            if not value:
                continue
        lines.append(f"{option} = {value}")
    text = "\n".join(lines) + "\n"
    (root / "pip.conf").write_text(text)
    return text


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[1])
    root.mkdir(parents=True, exist_ok=True)
    sys.stderr.write(write_context(root, effective_config()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
