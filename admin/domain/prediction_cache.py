"""A model version's predictions on holdout images, kept beside its run (``RUN_DIR/holdout-predictions.json``).

A version's weights never change, so what it predicts for an image never does either: each job asks the
champion only about the holdout images it has not seen yet, and the candidate's own predictions are kept
for the day it becomes the champion. The key is the image file's path, size and modification time (sample
files are content-addressed; a base image replaced in place gets a new time), so a changed file is predicted
again. A cache that cannot be read or written is only a slower job, never a failed one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from graft.core.util import file_key, write_atomic

log = logging.getLogger(__name__)

CACHE_NAME = "holdout-predictions.json"
PredictFn = Callable[[Path, list[tuple[Path, str]], str], tuple[list[str | None], list[str]]]


def _load(run_dir: Path) -> tuple[list[str], dict[str, str | None]]:
    try:
        data = json.loads((run_dir / CACHE_NAME).read_text())
        return list(data["labels"]), dict(data["predictions"])
    except (OSError, ValueError, KeyError, TypeError):
        return [], {}


def save(run_dir: Path, samples: Sequence[tuple[Path, str]], predictions: Sequence[str | None],
         labels: Sequence[str]) -> None:  # fmt: skip
    """Add these predictions to the run's cache (a candidate's, for the day it is the champion)."""
    known_labels, cached = _load(run_dir)
    if known_labels != list(labels):
        cached = {}
    for (path, _), pred in zip(samples, predictions, strict=True):
        if (key := file_key(path)) is not None:
            cached[key] = pred
    try:
        write_atomic(run_dir / CACHE_NAME, json.dumps({"labels": list(labels), "predictions": cached}).encode(),
                     fsync=False)  # fmt: skip
    except OSError as e:
        log.warning("holdout predictions of %s not cached: %s", run_dir, e)


def missing(run_dir: Path, samples: Sequence[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """The samples this run has no cached prediction for (all of them when the cache is empty)."""
    labels, cached = _load(run_dir)
    if not labels:
        return list(samples)
    return [s for s in samples if (k := file_key(s[0])) is None or k not in cached]


def cached_predict(predict: PredictFn, run_dir: Path, samples: Sequence[tuple[Path, str]],
                   device: str) -> tuple[list[str | None], list[str], int]:  # fmt: skip
    """``predict``'s answer for ``samples``, asking it only about images this run has not predicted yet.
    Also returns how many it was asked about."""
    labels, cached = _load(run_dir)
    keys = [file_key(path) for path, _ in samples]
    missing = [s for s, k in zip(samples, keys, strict=True) if k is None or k not in cached]
    if not missing and labels:
        return [cached[k] for k in keys if k is not None], labels, 0
    preds, labels = predict(run_dir, list(missing), device)
    save(run_dir, missing, preds, labels)
    fresh = iter(preds)
    answers = [next(fresh) if k is None or k not in cached else cached[k] for k in keys]
    return answers, list(labels), len(missing)
