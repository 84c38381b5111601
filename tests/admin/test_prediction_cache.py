"""The champion's holdout predictions are cached per version and extended only for new holdout images
(issue 25, part 2): the cached answer equals a fresh evaluation, on the real model and real images."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from admin.domain.jobs import default_evaluate
from admin.domain.prediction_cache import CACHE_NAME, cached_predict
from tests.support.images import photo


def _by_bytes(asked: list[int]):  # type: ignore[no-untyped-def]
    def evaluate(run_dir: Path, samples: Sequence[tuple[Path, str]], device: str) -> tuple[list[str | None], list[str]]:
        asked.append(len(samples))
        return [("ants" if sum(p.read_bytes()) % 2 else "bees") if p.is_file() else None for p, _ in samples], [
            "ants", "bees"]  # fmt: skip

    return evaluate


def test_only_new_or_changed_images_are_predicted_again(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    files = []
    for i in range(12):
        f = tmp_path / f"img{i}.png"
        f.write_bytes(photo(i))
        files.append((f, "ants"))
    asked: list[int] = []
    evaluate = _by_bytes(asked)
    first, labels, n = cached_predict(evaluate, run, files[:8], "cpu")
    assert n == 8 and labels == ["ants", "bees"] and (run / CACHE_NAME).is_file()
    again, _, n = cached_predict(evaluate, run, files, "cpu")
    assert n == 4 and again[:8] == first and asked == [8, 4], "only the 4 new images were predicted"
    assert again == evaluate(run, files, "cpu")[0], "the cached answer equals a fresh evaluation"
    files[2][0].write_bytes(photo(99))  # replaced in place: predicted again
    os.utime(files[2][0], ns=(1, 10**18))
    asked.clear()
    changed, _, n = cached_predict(evaluate, run, files, "cpu")
    assert n == 1 and changed == evaluate(run, files, "cpu")[0]
    (run / CACHE_NAME).write_text("{not json")  # damaged: a slower job, not a failed one
    assert cached_predict(evaluate, run, files, "cpu")[2] == 12


@pytest.mark.slow
def test_cached_predictions_equal_a_fresh_evaluation_of_the_real_model(
    serving_artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    from tests.support.artifacts import images

    run = tmp_path / "champion"
    shutil.copytree(serving_artifacts[0], run)
    (run / CACHE_NAME).unlink(missing_ok=True)
    holdout = images("val", per_class=6, offset=40)
    calls: list[int] = []

    def counted(run_dir: Path, samples: Sequence[tuple[Path, str]], device: str) -> tuple[list[str | None], list[str]]:
        calls.append(len(samples))
        return default_evaluate(run_dir, samples, device)

    cached_predict(counted, run, holdout[:8], "cpu")
    preds, labels, asked = cached_predict(counted, run, holdout, "cpu")
    fresh, fresh_labels = default_evaluate(run, holdout, "cpu")
    assert asked == len(holdout) - 8 and calls == [8, len(holdout) - 8]
    assert (preds, labels) == (fresh, fresh_labels)
