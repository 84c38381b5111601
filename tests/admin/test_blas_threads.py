"""The admin's process runs numpy on one BLAS thread once its server starts (admin/server.py): its products are
small, and extra OpenBLAS threads only spin beside many concurrent requests. Checked in a fresh process, where
numpy starts with one BLAS thread per core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import json, sys
from pathlib import Path
import numpy  # noqa: F401 - loads OpenBLAS
from threadpoolctl import threadpool_info
from admin.server import AdminServer
from tests.admin.test_api import settings
from tests.support.fakes import FakeRollout, fake_evaluate, placeholder_export

def blas():
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

before = blas()
st = settings(Path(sys.argv[1]), admin_port=0)
extra = {"evaluate": fake_evaluate, "export": placeholder_export}
with AdminServer(st, rollout=FakeRollout(), app_kwargs=extra):
    print(json.dumps({"before": before, "after": blas()}))
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: BLAS has one thread anyway")
def test_the_admin_runs_blas_on_one_thread(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}  # numpy's own default
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=True)  # fmt: skip
    threads = json.loads(done.stdout.strip().splitlines()[-1])
    assert threads["before"] and max(threads["before"]) > 1, threads  # the check can fail
    assert threads["after"] == [1] * len(threads["after"]), threads
