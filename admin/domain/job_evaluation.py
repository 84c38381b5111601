"""The gate's predictions computed in the training Job, not in the admin's pod (issue 25, part 2, Kubernetes).

Before submitting, the admin writes what the Job must predict (``JOB_DIR/job-eval/request.json``): the
candidate on the snapshot's holdout, after preparing it as the champion is exported (its INT8 model when
the champion serves INT8), the refit's own model beside it when the candidate turns out averaged with the
champion (``run/unaveraged``, prepared with it; "absent" otherwise), and the champion on the holdout images
its cache lacks. The Job's container runs
``graft job-eval REQUEST`` after ``graft train`` (admin/runners/kube_jobs.py), under the Job's deadline,
and writes one result per model beside the request. When the Job has succeeded the admin reads them,
checked against its own plan (the same images in the same order, the model's labels, plain files only),
adds them to the models' prediction caches and judges from them. A result that is missing or fails a check
is logged, and that model is evaluated in the admin's child process, as with the local runner.

The whole holdout is asked for, not the fair part of it: what the candidate saw is known only after
training, and a prediction depends on the image alone, so the gate picks its images from the answers.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from admin.domain.evaluation_child import EvaluateFn, load_named, name_of
from admin.domain.prediction_cache import cached_predict, missing, save
from graft.core.artifact import MODEL_JSON, UNAVERAGED_DIR, read_card
from graft.core.util import write_atomic

log = logging.getLogger(__name__)

REQUEST_DIR = "job-eval"
REQUEST_FILE = "request.json"
UNAVERAGED = "unaveraged"  # the role of the refit's own model: known after training, so it may be absent
Samples = Sequence[tuple[Path, str]]
Answer = tuple[list[str | None], list[str]]
PredictFn = Callable[[Path, Samples, bool], Answer]  # judge's ``run``: (run folder, samples, cached?)


@dataclass(frozen=True)
class Ask:
    """One model's predictions asked of the Job: ``role`` candidate (prepared first) or champion."""

    role: str
    run_dir: Path
    samples: tuple[tuple[Path, str], ...]
    result: Path


@dataclass(frozen=True)
class JobEvaluationPlan:
    request: Path  # TrainRequest.evaluation: the Job mounts its folder writable and writes the results there
    asks: tuple[Ask, ...]


def _under(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def plan_in_job(runner: object, job_dir: Path, candidate_dir: Path, champion_dir: Path | None, holdout: Samples,
                evaluate: EvaluateFn, prepare: Callable[[Path, Path | None], object],
                device: str) -> JobEvaluationPlan | None:  # fmt: skip
    """Write the Job's evaluation request, or return None when the evaluation stays in the admin: the runner
    cannot run it (local, Kubeflow), a function cannot be named for another process, or a model or image
    is not on the Job's volume (the Job would not see what the admin sees)."""
    volume = getattr(runner, "evaluates_under", None)
    if volume is None:
        return None
    names = {"evaluate": name_of(evaluate), "prepare": name_of(prepare)}
    if None in names.values():
        log.info("the gate's evaluation stays in the admin: %s cannot be run in another process", names)
        return None
    root = Path(volume).resolve()
    paths = [candidate_dir, *([champion_dir] if champion_dir is not None else []), *(p for p, _ in holdout)]
    outside = next((p for p in paths if not _under(p, root)), None)
    if outside is not None:
        log.info("the gate's evaluation stays in the admin: %s is not on the training Job's volume %s", outside, root)
        return None
    folder = job_dir / REQUEST_DIR
    folder.mkdir(parents=True, exist_ok=True)
    asks = [Ask("candidate", candidate_dir, tuple(holdout), folder / "candidate.json")]
    if champion_dir is not None:  # averaged with the champion, the refit's own model is judged too, if it exists
        asks.append(Ask(UNAVERAGED, candidate_dir / UNAVERAGED_DIR, tuple(holdout), folder / "unaveraged.json"))
    if champion_dir is not None and (todo := missing(champion_dir, holdout)):
        asks.append(Ask("champion", champion_dir, tuple(todo), folder / "champion.json"))
    asks = [a for a in asks if a.samples]
    if not asks:
        return None
    body = {**names, "device": device, "champion_dir": str(champion_dir) if champion_dir else None,
            "models": [{"role": a.role, "run_dir": str(a.run_dir), "result": str(a.result),
                        "samples": [[str(p), label] for p, label in a.samples]} for a in asks]}  # fmt: skip
    write_atomic(folder / REQUEST_FILE, json.dumps(body).encode(), fsync=False)
    log.info("the training Job predicts the holdout: %s", ", ".join(f"{a.role} {len(a.samples)}" for a in asks))
    return JobEvaluationPlan(folder / REQUEST_FILE, tuple(asks))


# ------------------------------------------------------------------ in the Job's pod


def run_request(path: Path) -> int:
    """``graft job-eval REQUEST``: prepare the candidate, predict each model's images, write each result.

    A model that fails gets ``{"error": ...}`` instead of predictions (the admin then evaluates it and
    reports the error as it would have); the exit status is 0 unless the request itself is unusable."""
    request = json.loads(Path(path).read_text())
    evaluate = load_named(request["evaluate"])
    device = str(request["device"])
    champion_dir = Path(request["champion_dir"]) if request.get("champion_dir") else None
    prepared = False
    for ask in request["models"]:
        run_dir, role = Path(ask["run_dir"]), str(ask["role"])
        samples = [(Path(p), str(label)) for p, label in ask["samples"]]
        out: dict[str, Any] = {"role": role}
        try:
            if role == "candidate":  # judged as it will serve: exported like the champion first
                load_named(request["prepare"])(run_dir, champion_dir)
                prepared = True
            elif role == UNAVERAGED and not (run_dir / MODEL_JSON).is_file():
                out["absent"] = True  # nothing was averaged: there is no second model to judge
                write_atomic(Path(ask["result"]), json.dumps(out).encode(), fsync=False)
                continue
            elif role == UNAVERAGED and not prepared:  # the candidate's preparation made it (INT8 included)
                raise RuntimeError("the candidate was not prepared, so neither was the refit's own model")
            preds, labels = evaluate(run_dir, samples, device)
            out.update(paths=[str(p) for p, _ in samples], predictions=list(preds), labels=list(labels))
            log.info("%s %s: %d holdout image(s) predicted", role, run_dir, len(samples))
        except Exception as e:  # told to the admin, which evaluates this model itself
            log.exception("%s %s: evaluation failed", role, run_dir)
            out["error"] = f"{type(e).__name__}: {e}"[:2000]
        write_atomic(Path(ask["result"]), json.dumps(out).encode(), fsync=False)
    return 0


# ------------------------------------------------------------------ back in the admin


def _read_plain(path: Path, limit: int) -> bytes:
    """The bytes of a regular file, never through a symlink, at most ``limit`` of them."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            raise ValueError(f"not a regular file of at most {limit} bytes")
        return f.read(limit + 1)


def read_result(ask: Ask) -> Answer | None:
    """The Job's predictions for ``ask`` when they pass every check, else None (and a log line saying why)."""
    try:
        data = json.loads(_read_plain(ask.result, (1 << 20) + 8192 * len(ask.samples)))
    except FileNotFoundError:
        log.warning("no predictions of the %s from the training Job (%s missing)", ask.role, ask.result)
        return None
    except (OSError, ValueError) as e:
        log.warning("predictions of the %s from the training Job refused: %s: %s", ask.role, ask.result, e)
        return None
    if isinstance(data, dict) and data.get("absent") is True and data.get("role") == ask.role == UNAVERAGED:
        return None  # nothing averaged: the judge does not ask for it (and evaluates it here if it finds one)
    problem = _problem(data, ask)
    if problem:
        log.warning("predictions of the %s from the training Job refused (%s): %s", ask.role, ask.result, problem)
        return None
    return list(data["predictions"]), list(data["labels"])


def _problem(data: object, ask: Ask) -> str:
    if not isinstance(data, dict):
        return "not a JSON object"
    if "error" in data:
        return f"the Job's evaluation failed: {str(data['error'])[:500]}"
    labels, preds, paths = data.get("labels"), data.get("predictions"), data.get("paths")
    if data.get("role") != ask.role or paths != [str(p) for p, _ in ask.samples]:
        return "not the images the admin asked for"
    try:
        known = list(read_card(ask.run_dir).labels)
    except Exception as e:  # an unreadable card is one more reason to evaluate here
        return f"cannot read the model's labels: {e}"
    if labels != known:
        return f"labels {str(labels)[:200]} are not the model's {known}"
    if not isinstance(preds, list) or len(preds) != len(ask.samples):
        return f"{len(preds) if isinstance(preds, list) else 'no'} predictions for {len(ask.samples)} images"
    if any(p is not None and p not in known for p in preds):
        return "a prediction is not one of the model's labels"
    return ""


class InJobPredictions:
    """judge's ``run``: the Job's answers where they passed the checks, else ``fallback`` (the admin's child)."""

    def __init__(self, plan: JobEvaluationPlan, fallback: PredictFn) -> None:
        self.fallback = fallback
        self.answers: dict[Path, tuple[dict[str, str | None], list[str]]] = {}
        for ask in plan.asks:
            got = read_result(ask)
            if got is None:
                continue
            preds, labels = got
            save(ask.run_dir, ask.samples, preds, labels)  # the champion's cache extended; the candidate's kept
            by_path = {str(p): pred for (p, _), pred in zip(ask.samples, preds, strict=True)}
            self.answers[ask.run_dir.resolve()] = (by_path, labels)

    def __call__(self, run_dir: Path, samples: Samples, cached: bool) -> Answer:
        if cached:  # the champion: its cache (extended above) first, the rest as below
            preds, labels, _ = cached_predict(self._answer, run_dir, samples, "")
            return preds, labels
        return self._answer(run_dir, list(samples), "")

    def _answer(self, run_dir: Path, samples: list[tuple[Path, str]], _device: str) -> Answer:
        got = self.answers.get(run_dir.resolve())
        if got is not None and all(str(p) in got[0] for p, _ in samples):
            return [got[0][str(p)] for p, _ in samples], list(got[1])
        log.warning("the training Job's predictions do not cover %s: evaluating in the admin's child process",
                    run_dir)  # fmt: skip
        return self.fallback(run_dir, samples, False)
