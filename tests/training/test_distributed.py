"""``graft train`` under torchrun: two CPU processes with gloo, real images, real run folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graft.core.artifact import load_model, read_card

pytestmark = pytest.mark.slow

_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun() -> str:
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert exe is not None
    return exe


def _train(args: list[str], procs: int, script: Path | None = None) -> subprocess.CompletedProcess[str]:
    launch = [_torchrun(), "--standalone", "--nproc-per-node", str(procs)] if procs > 1 else [sys.executable]
    program = [str(script)] if script else ["-m", "graft.cli"]
    return subprocess.run([*launch, *program, "train", *args],
                          capture_output=True, text=True, timeout=600, env=_ENV)  # fmt: skip


def _data(hymenoptera: Path, weights: Path, per_class: int) -> list[str]:
    return ["--data", str(hymenoptera), "--backbone", "mobilenet_v2", "--weights", str(weights),
            "--max-per-class", str(per_class)]  # fmt: skip


@pytest.mark.parametrize("extra", [[], ["--trainable-stages", "1", "--no-feature-cache"]], ids=["auto", "full"])
def test_torchrun_two_processes(hymenoptera: Path, mobilenet_weights: Path, tmp_path: Path, extra: list[str]) -> None:
    out = tmp_path / "run"
    args = [*_data(hymenoptera, mobilenet_weights, 4), "--output", str(out), "--epochs", "2", "--batch-size", "4"]
    proc = _train([*args, *extra], 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1 of 2" in proc.stderr
    assert proc.stderr.count("val images used") == 1, "only rank 0 logs below WARNING"
    assert proc.stdout.count('"run_dir"') == 1, "only rank 0 answers"
    card = read_card(out)
    assert card.lineage.num_train == 8
    assert card.recipe["distributed"] == {
        "world_size": 2, "backend": "gloo", "distributed_batch": "split", "per_rank_batch": 2,
        "effective_batch": 4, "lr_scaling": "none", "lr_factor": 1.0,
    }  # fmt: skip
    assert card.recipe["batch_size"] == 4  # the user's recipe, not a rank's share of it
    for name in ("model.safetensors", "metrics.json", "train.log", "progress.json", "curves.png"):
        assert (out / name).is_file(), name
    load_model(out)
    sd = load_file(str(out / "model.safetensors"))
    original = torch.load(mobilenet_weights, weights_only=True)
    assert torch.equal(sd["features.0.0.weight"], original["features.0.0.weight"])
    assert not torch.equal(sd["classifier.1.weight"], torch.zeros_like(sd["classifier.1.weight"]))
    if not extra:  # the auto recipe searched on the shared cache, each candidate trained data-parallel
        assert "chosen" in card.recipe["auto"]


# graft's CLI with dropout off: a rank draws the dropout masks of its slice of a batch from its own RNG, so with
# dropout on a run cannot equal a one-process run; without it, only float reduction order differs.
_NO_DROPOUT = """import sys, torch
torch.nn.Dropout.forward = lambda self, x: x
from graft.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_two_processes_match_one(hymenoptera: Path, mobilenet_weights: Path, tmp_path: Path) -> None:
    """Same seed, same recipe: every global batch holds the same images as one process's, so the runs agree
    to float tolerance (1e-4 on every epoch's losses, validation accuracy equal) once dropout is off."""
    script = tmp_path / "graft_no_dropout.py"
    script.write_text(_NO_DROPOUT)
    # one head seed, no refit: several seeds are averaged and the head refit in one process only
    # (training/seeds.py, training/refit.py)
    args = [*_data(hymenoptera, mobilenet_weights, 8), "--recipe", "head", "--epochs", "3", "--batch-size", "4",
            "--head-seeds", "1", "--no-refit"]
    runs = {}
    for procs in (1, 2):
        out = tmp_path / f"run{procs}"
        proc = _train([*args, "--output", str(out)], procs, script)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[procs] = (read_card(out), json.loads((out / "metrics.json").read_text()))
    (card1, m1), (card2, m2) = runs[1], runs[2]
    assert card2.recipe.pop("distributed")["world_size"] == 2 and "distributed" not in card1.recipe
    assert card1.recipe == card2.recipe and card1.labels == card2.labels
    assert card1.lineage.dataset_digest == card2.lineage.dataset_digest
    assert len(m1["history"]) == len(m2["history"]) == 3
    for a, b in zip(m1["history"], m2["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4), (a, b)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4), (a, b)
        assert a["val_accuracy"] == b["val_accuracy"] and a["lr"] == pytest.approx(b["lr"])
    assert m1["confusion_matrix"] == m2["confusion_matrix"]


def test_world_size_that_does_not_fit_the_data(hymenoptera: Path, mobilenet_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [*_data(hymenoptera, mobilenet_weights, 4), "--output", str(out), "--recipe", "head", "--batch-size", "16"]
    proc = _train(args, 2)
    assert proc.returncode != 0
    assert "8 training images cannot fill one step of 2 processes x 8 images" in proc.stderr
    assert not (out / "model.json").exists()
