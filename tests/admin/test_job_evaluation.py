"""The gate's predictions computed in the training Job (issue 25, part 2, Kubernetes): the request the admin
writes, ``graft job-eval`` run for real on it, and the checks the admin makes before trusting the answers.
The whole job through the Kubernetes runner: tests/admin/test_kube_job_evaluation.py."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from admin.domain.job_evaluation import InJobPredictions, JobEvaluationPlan, plan_in_job, run_request
from admin.domain.jobs import default_prepare
from admin.domain.judge import default_evaluate
from admin.domain.prediction_cache import CACHE_NAME, cached_predict
from graft.core.artifact import UNAVERAGED_DIR
from tests.support.fakes import fake_evaluate, write_toy_card
from tests.support.images import photo

ROOT = Path(__file__).resolve().parents[2]
Samples = list[tuple[Path, str]]


def job_eval(request: Path) -> subprocess.CompletedProcess[str]:
    """The Job's evaluation step, as its container runs it: ``graft job-eval REQUEST`` in a fresh process."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HOME": str(request.parent)}
    cmd = [sys.executable, "-m", "graft.cli", "job-eval", str(request)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)


class Fallback:
    """The admin's child evaluator, as a recorder that answers with ``fake_evaluate``."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, int, bool]] = []

    def __call__(self, run_dir: Path, samples: Any, cached: bool) -> tuple[list[str | None], list[str]]:
        self.calls.append((run_dir, len(samples), cached))
        return fake_evaluate(run_dir, samples)


# ------------------------------------------------------------------ real models, the real entry point


@pytest.mark.slow
def test_predictions_from_the_job_step_equal_a_fresh_evaluation(tmp_path: Path) -> None:
    from tests.support.artifacts import images, shared_missing_reason, train_tiny_run

    if reason := shared_missing_reason():
        pytest.skip(reason)
    volume = tmp_path / "data"
    holdout: Samples = []
    for src, label in images("val", 4):  # the Job sees only its volume: the holdout images are on it
        dst = volume / "samples" / label / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        holdout.append((dst, label))
    champion = train_tiny_run(volume / "runs" / "v1", per_class=6, steps=60, seed=1)
    candidate = train_tiny_run(volume / "jobs" / "j1" / "run", per_class=8, steps=80, seed=2)
    # The champion already predicted half of the holdout in an earlier job: only the rest is asked for.
    cached_predict(default_evaluate, champion, holdout[::2], "cpu")
    runner = SimpleNamespace(evaluates_under=volume)
    plan = plan_in_job(runner, volume / "jobs" / "j1", candidate, champion, holdout, default_evaluate,
                       default_prepare, "cpu")  # fmt: skip
    assert plan is not None and plan.request == volume / "jobs/j1/job-eval/request.json"
    assert [(a.role, len(a.samples)) for a in plan.asks] == [("candidate", 8), ("unaveraged", 8), ("champion", 4)]
    assert [s for s in plan.asks[2].samples] == holdout[1::2]

    done = job_eval(plan.request)
    assert done.returncode == 0, done.stderr[-2000:]

    fallback = Fallback()
    run = InJobPredictions(plan, fallback)
    fair = holdout[1:]  # the gate asks for its fair part: a subset of what the Job predicted
    assert run(candidate, fair, False) == default_evaluate(candidate, fair, "cpu")
    assert run(champion, holdout, True) == default_evaluate(champion, holdout, "cpu")
    assert fallback.calls == [], "nothing evaluated in the admin"
    assert json.loads((plan.request.parent / "unaveraged.json").read_text()) == {"role": "unaveraged", "absent": True}
    # Kept for later jobs: the candidate's answers for when it is champion, the champion's cache extended.
    assert len(json.loads((candidate / CACHE_NAME).read_text())["predictions"]) == 8
    assert len(json.loads((champion / CACHE_NAME).read_text())["predictions"]) == 8


# ------------------------------------------------------------------ checks and fallback (stand-in models)


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def holdout(volume: Path) -> Samples:
    out = []
    for i in range(6):
        f = volume / "samples" / f"h{i}.png"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(photo(i))
        out.append((f, "ants" if i % 2 else "bees"))
    return out


def toy_plan(volume: Path, holdout: Samples, champion: bool = True) -> tuple[JobEvaluationPlan, Path, Path]:
    cand = volume / "jobs" / "j1" / "run"
    champ = volume / "runs" / "v1"
    write_toy_card(cand, ["ants", "bees"], 0.9)
    write_toy_card(champ, ["ants", "bees"], 0.6)
    runner = SimpleNamespace(evaluates_under=volume)
    plan = plan_in_job(runner, volume / "jobs" / "j1", cand, champ if champion else None, holdout, fake_evaluate,
                       default_prepare, "cpu")  # fmt: skip
    assert plan is not None
    return plan, cand, champ


def test_the_job_step_answers_the_plan(volume: Path, holdout: Samples) -> None:
    plan, cand, champ = toy_plan(volume, holdout)
    assert job_eval(plan.request).returncode == 0
    fallback = Fallback()
    run = InJobPredictions(plan, fallback)
    assert run(cand, holdout, False) == fake_evaluate(cand, holdout)
    assert run(champ, holdout[2:], True) == fake_evaluate(champ, holdout[2:])
    assert fallback.calls == []
    result = json.loads((plan.request.parent / "candidate.json").read_text())
    assert result["paths"] == [str(p) for p, _ in holdout] and result["labels"] == ["ants", "bees"]


def test_the_job_step_judges_the_refit_alone_beside_an_averaged_candidate(
    volume: Path, holdout: Samples, caplog: pytest.LogCaptureFixture
) -> None:
    plan, cand, _ = toy_plan(volume, holdout)
    own = cand / UNAVERAGED_DIR  # written by training, after the plan: the plan cannot know whether it will be
    write_toy_card(own, ["ants", "bees"], 0.3)
    assert [a.role for a in plan.asks] == ["candidate", "unaveraged", "champion"]
    assert job_eval(plan.request).returncode == 0
    fallback = Fallback()
    with caplog.at_level(logging.INFO, logger="admin.domain.job_evaluation"):
        run = InJobPredictions(plan, fallback)
        assert run(own, holdout[1:], False) == fake_evaluate(own, holdout[1:])
    assert fallback.calls == [] and "do not cover" not in caplog.text, "the refit alone was judged in the Job"
    # A Job that says "absent" while the model is there: the admin evaluates it itself, as for any gap.
    (plan.request.parent / "unaveraged.json").write_text(json.dumps({"role": "unaveraged", "absent": True}))
    assert InJobPredictions(plan, fallback)(own, holdout, False) == fake_evaluate(own, holdout)
    assert fallback.calls == [(own, len(holdout), False)]


def _tamper(kind: str, result: Path, tmp_path: Path) -> None:
    data = json.loads(result.read_text())
    if kind == "missing":
        result.unlink()
        return
    if kind == "symlink":  # pointing at a file the admin can read and the Job should not choose
        secret = tmp_path / "elsewhere.json"
        secret.write_text(json.dumps(data))
        result.unlink()
        result.symlink_to(secret)
        return
    if kind == "short":
        data["predictions"] = data["predictions"][:-1]
    elif kind == "unknown label":
        data["predictions"][0] = "wasps"
    elif kind == "other labels":
        data["labels"] = ["bees", "ants"]
    elif kind == "other images":
        data["paths"][0] = "/etc/passwd"
    elif kind == "error":
        data = {"role": "candidate", "error": "QuantizationError: the INT8 model lost 9 points"}
    elif kind == "not json":
        result.write_text("{nope")
        return
    result.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "kind", ["missing", "symlink", "short", "unknown label", "other labels", "other images", "error", "not json"]
)
def test_refused_answers_are_evaluated_in_the_admin(
    kind: str, volume: Path, holdout: Samples, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plan, cand, champ = toy_plan(volume, holdout)
    assert run_request(plan.request) == 0  # the step's code, in this process (the real process: above)
    _tamper(kind, plan.request.parent / "candidate.json", tmp_path)
    fallback = Fallback()
    with caplog.at_level(logging.WARNING, logger="admin.domain.job_evaluation"):
        run = InJobPredictions(plan, fallback)
        assert run(cand, holdout, False) == fake_evaluate(cand, holdout)
        assert run(champ, holdout, True) == fake_evaluate(champ, holdout)
    assert fallback.calls == [(cand, len(holdout), False)], "only the refused model, in the admin's child"
    assert "evaluating in the admin's child process" in caplog.text
    assert "candidate" in caplog.text and ("refused" in caplog.text or "missing" in caplog.text)
    if kind == "error":
        assert "QuantizationError" in caplog.text


def test_the_evaluation_stays_in_the_admin_when_the_job_cannot_see_it(
    volume: Path, holdout: Samples, tmp_path: Path
) -> None:
    cand = volume / "jobs" / "j1" / "run"
    write_toy_card(cand, ["ants", "bees"], 0.9)
    outside = tmp_path / "elsewhere" / "v1"
    write_toy_card(outside, ["ants", "bees"], 0.6)
    on_volume = SimpleNamespace(evaluates_under=volume)
    job = volume / "jobs" / "j1"
    assert plan_in_job(object(), job, cand, None, holdout, fake_evaluate, default_prepare, "cpu") is None, "local"
    assert plan_in_job(on_volume, job, cand, outside, holdout, fake_evaluate, default_prepare, "cpu") is None
    stray = [*holdout, (tmp_path / "x.png", "ants")]
    assert plan_in_job(on_volume, job, cand, None, stray, fake_evaluate, default_prepare, "cpu") is None
    assert plan_in_job(on_volume, job, cand, None, holdout, lambda r, s, d: ([], []), default_prepare, "cpu") is None
    assert not (job / "job-eval").exists()
    plan = plan_in_job(on_volume, job, cand, None, holdout, fake_evaluate, default_prepare, "cpu")
    assert plan is not None and [a.role for a in plan.asks] == ["candidate"]
