"""The gate's predictions run in a child process, bounded by the job's deadline (issue 25, part 2)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from admin.domain.evaluation_child import ChildEvaluator, EvaluationFailedError, EvaluationTimeoutError, name_of
from admin.domain.prediction_cache import CACHE_NAME
from tests.support.images import photo

Answer = tuple[list[str | None], list[str]]


def where_and_what(run_dir: Path, samples: Sequence[tuple[Path, str]], device: str) -> Answer:
    """Answers with the process that predicted, whether it saw the admin's token, and the image's size."""
    seen = "token" if os.environ.get("GRAFT_ADMIN_TOKEN") else "no-token"
    return [f"{os.getpid()}:{seen}:{p.stat().st_size}" for p, _ in samples], ["ants", "bees"]


def sleepy(run_dir: Path, samples: Sequence[tuple[Path, str]], device: str) -> Answer:
    time.sleep(120)
    return [], []


@pytest.fixture
def holdout(tmp_path: Path) -> list[tuple[Path, str]]:
    out = []
    for i in range(5):
        f = tmp_path / f"h{i}.png"
        f.write_bytes(photo(i))
        out.append((f, "ants"))
    return out


def test_predictions_come_from_a_child_without_secrets_and_fill_the_cache(
    tmp_path: Path, holdout: list[tuple[Path, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRAFT_ADMIN_TOKEN", "x" * 40)
    run = tmp_path / "champion"
    run.mkdir()
    child = ChildEvaluator(where_and_what, "cpu", tmp_path / "work", time.monotonic() + 120)
    preds, labels = child(run, holdout[:3], True)
    pids = {str(p).split(":")[0] for p in preds}
    assert labels == ["ants", "bees"] and len(pids) == 1 and pids != {str(os.getpid())}, "another process"
    assert all(str(p).split(":")[1] == "no-token" for p in preds), "no secret in the child's environment"
    assert [str(p).split(":")[2] for p in preds] == [str(p.stat().st_size) for p, _ in holdout[:3]]
    again, _ = child(run, holdout, True)  # only the two new images are predicted, by a new child
    assert again[:3] == preds and (run / CACHE_NAME).is_file()
    assert {str(p).split(":")[0] for p in again[3:]}.isdisjoint(pids)


def test_the_job_deadline_stops_the_evaluation(tmp_path: Path, holdout: list[tuple[Path, str]]) -> None:
    run = tmp_path / "candidate"
    run.mkdir()
    child = ChildEvaluator(sleepy, "cpu", tmp_path / "work", time.monotonic() + 3)
    t0 = time.monotonic()
    with pytest.raises(EvaluationTimeoutError, match="GRAFT_JOB_TIMEOUT_S"):
        child(run, holdout, False)
    assert time.monotonic() - t0 < 30, "killed at the deadline, not after the 120 s the evaluation wanted"


def test_a_closure_is_evaluated_in_process(tmp_path: Path, holdout: list[tuple[Path, str]]) -> None:
    def local(run_dir: Path, samples: Sequence[tuple[Path, str]], device: str) -> Answer:
        return [str(os.getpid())] * len(samples), ["ants"]

    assert name_of(local) is None and name_of(where_and_what) == f"{__name__}:where_and_what"
    run = tmp_path / "run"
    run.mkdir()
    preds, _ = ChildEvaluator(local, "cpu", tmp_path / "work", time.monotonic() + 60)(run, holdout, False)
    assert set(preds) == {str(os.getpid())}


def scores_from_a_child(run_dir: Path, samples: Sequence[tuple[Path, str]], device: str) -> list[list[float] | None]:
    """[the process id, the image's size] per image: where it ran and on what; None for the label 'none'."""
    return [None if label == "none" else [float(os.getpid()), float(p.stat().st_size)] for p, label in samples]


def broken_scores(run_dir: Path, samples: Sequence[tuple[Path, str]], device: str) -> list[list[float] | None]:
    raise OSError("no model here")


def test_the_data_check_s_scores_come_from_a_child_and_are_never_cached(
    tmp_path: Path, holdout: list[tuple[Path, str]]
) -> None:
    run = tmp_path / "champion"
    run.mkdir()
    child = ChildEvaluator(where_and_what, "cpu", tmp_path / "work", time.monotonic() + 120)
    asked = [*holdout[:2], (holdout[2][0], "none")]
    scores = child.scores(scores_from_a_child, run, asked)
    assert scores[2] is None and [s[1] for s in scores[:2]] == [p.stat().st_size for p, _ in holdout[:2]]  # type: ignore[index]
    assert {s[0] for s in scores[:2]} != {os.getpid()}, "another process"  # type: ignore[index]
    assert not (run / CACHE_NAME).exists(), "probabilities are not the predictions' cache"
    with pytest.raises(EvaluationFailedError, match="no model here"):
        child.scores(broken_scores, run, asked)
    sleeper = ChildEvaluator(where_and_what, "cpu", tmp_path / "work2", time.monotonic() + 3)
    with pytest.raises(EvaluationTimeoutError):
        sleeper.scores(sleepy, run, asked)  # type: ignore[arg-type]
