"""``graft backbones | head``: a reader that stops early is not an error (no BrokenPipeError traceback)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.paths import REPO


def test_output_into_a_closed_pipe_exits_cleanly() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before graft writes a byte, as `head` is after its lines
    try:
        done = subprocess.run([sys.executable, "-m", "graft.cli", "backbones"], stdout=write_end,
                              stderr=subprocess.PIPE, cwd=REPO, timeout=120, check=False)  # fmt: skip
    finally:
        os.close(write_end)
    assert done.returncode == 0
    assert done.stderr == b"", done.stderr.decode()


def test_head_reads_the_first_backbone() -> None:
    done = subprocess.run(f"'{sys.executable}' -m graft.cli backbones | head -n 1", shell=True, cwd=REPO,
                          capture_output=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 1
    assert b"Traceback" not in done.stderr
