"""``graft train`` runs unchanged under torchrun (DistributedDataParallel, gloo on the CPU)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graft.core.artifact import read_card

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("extra", [[], ["--trainable-stages", "1", "--no-feature-cache"]], ids=["cached", "full"])
def test_torchrun_two_processes(hymenoptera: Path, mobilenet_weights: Path, tmp_path: Path, extra: list[str]) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "graft.cli", "train",
         "--data", str(hymenoptera), "--output", str(out), "--backbone", "mobilenet_v2",
         "--weights", str(mobilenet_weights), "--max-per-class", "4", "--epochs", "2", "--batch-size", "4", *extra],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1 of 2" in proc.stderr
    card = read_card(out)
    assert card.lineage.num_train == 8
    sd = load_file(str(out / "model.safetensors"))
    original = torch.load(mobilenet_weights, weights_only=True)
    assert torch.equal(sd["features.0.0.weight"], original["features.0.0.weight"])
    assert not torch.equal(sd["classifier.1.weight"], torch.zeros_like(sd["classifier.1.weight"]))
