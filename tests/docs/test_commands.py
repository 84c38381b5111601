"""The commands the README and the docs show: the five-command loop parses, every `graft ...` line in a
shell block of the README and the getting-started pages is accepted by the parser, the README's links
resolve, and a few cheap commands run as shown."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from graft.cli import build_parser
from tests.support.paths import HYMENOPTERA, REPO

README = REPO / "README.md"
PAGES_WITH_COMMANDS = [README, REPO / "docs" / "getting-started.md"]


def _shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S)


def _commands(block: str) -> list[str]:
    """Logical lines of a shell block: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line for line in joined.splitlines() if shlex.split(line, comments=True)]


def _graft_argv(line: str) -> list[str] | None:
    words = shlex.split(line, comments=True)
    return words[1:] if words and words[0] == "graft" else None


def _loop_block() -> str:
    section = README.read_text().split("## Your own images, the whole loop, five commands", 1)[1]
    return _shell_blocks(section)[0]


def test_readme_loop_is_five_commands_and_its_graft_commands_parse() -> None:
    lines = _commands(_loop_block())
    assert len(lines) == 5, lines
    argvs = [argv for line in lines if (argv := _graft_argv(line)) is not None]
    assert [a[0] for a in argvs][:2] == ["train", "serve"], "the loop starts by training and serving"
    parser = build_parser()
    for argv in argvs:
        parser.parse_args(argv)  # SystemExit (a failure) on an unknown command or option


@pytest.mark.parametrize("page", PAGES_WITH_COMMANDS, ids=lambda p: p.name)
def test_every_graft_command_shown_parses(page: Path) -> None:
    parser = build_parser()
    shown = [
        argv for block in _shell_blocks(page.read_text()) for line in _commands(block)
        if (argv := _graft_argv(line)) is not None
    ]  # fmt: skip
    assert shown, f"{page.name} shows no graft command"
    for argv in shown:
        if argv == ["--help"]:
            continue
        try:
            parser.parse_args(argv)
        except SystemExit as e:
            pytest.fail(f"{page.name}: `graft {shlex.join(argv)}` is refused by the parser ({e})")


def test_a_stale_command_would_be_refused() -> None:
    """What the checks above rely on: the parser refuses what graft does not have."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "runs/mine", "--no-such-flag"])


def test_readme_links_resolve() -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", README.read_text()):
        if target.startswith(("http://", "https://", "#")):
            continue
        path = target.split("#", 1)[0]
        assert (REPO / path).exists(), f"README links to {target}, which does not exist"


def _graft(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "graft.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_graft_help_runs() -> None:
    proc = _graft("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "check", "export", "serve", "admin"):
        assert command in proc.stdout


def test_graft_backbones_lists_the_default_backbone() -> None:
    proc = _graft("backbones")
    assert proc.returncode == 0, proc.stderr
    names = proc.stdout.split()
    assert "efficientnet_lite0" in names and "resnet18" in names


@pytest.mark.skipif(not HYMENOPTERA.is_dir(), reason="../shared/data/hymenoptera is absent (see ../shared/README.md)")
def test_graft_check_on_a_tiny_folder(tmp_path: Path) -> None:
    """`graft check DIR` as the docs show it, on six real photos per class (linked, not copied)."""
    data = tmp_path / "tiny"
    for label in ("ants", "bees"):
        (data / label).mkdir(parents=True)
        for photo in sorted((HYMENOPTERA / "train" / label).glob("*.jpg"))[:6]:
            (data / label / photo.name).symlink_to(photo)
    proc = _graft("check", str(data), "--json")
    assert '"ants"' in proc.stdout and '"bees"' in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode in (0, 1)  # 1: errors found (six images per class may be called too few)
