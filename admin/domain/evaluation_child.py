"""The gate's predictions in a child process, bounded by the job's deadline (issue 25, part 2).

The admin used to run both models over the whole holdout in its own process: about 49 ms of CPU per image
per model beside the request threads, torch in the admin's memory, and nothing to stop it. Here each model's
predictions run as ``python -m admin.domain.evaluation_child REQUEST.json`` (its own session, no secrets in
its environment, killed with the admin), the champion's through its cache
(:mod:`admin.domain.prediction_cache`); the job waits until the deadline it started with and kills the
child past it. On Kubernetes (the ``kubernetes`` runner) the training Job computes them after training
instead (:mod:`admin.domain.job_evaluation`); this child is then the fallback for what the Job did not answer.

The evaluate function travels by name (``module:qualname``): the default, or a test's stand-in defined at
module level. One that cannot be named (a closure) runs in-process, as before.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from admin.domain.prediction_cache import cached_predict, save
from graft.core.errors import GraftError
from graft.core.util import child_env, die_with_parent, write_atomic

log = logging.getLogger(__name__)

EvaluateFn = Callable[[Path, Sequence[tuple[Path, str]], str], tuple[list[str | None], list[str]]]
ScoreFn = Callable[[Path, Sequence[tuple[Path, str]], str], list[list[float] | None]]


class EvaluationTimeoutError(GraftError):
    """The gate's evaluation ran past the job's deadline (GRAFT_JOB_TIMEOUT_S covers the whole job)."""


class EvaluationFailedError(GraftError):
    """The evaluation process ended without predictions (its log tail is in the message)."""


def name_of(evaluate: Callable[..., object]) -> str | None:
    """``module:qualname`` when the child can import it, else None."""
    module, qualname = getattr(evaluate, "__module__", None), getattr(evaluate, "__qualname__", "")
    if not module or "<" in qualname or module == "__main__":
        return None
    return f"{module}:{qualname}"


def load_named(name: str) -> Any:
    """The function ``module:qualname`` names (see :func:`name_of`)."""
    module, _, qualname = name.partition(":")
    target: object = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


class ChildEvaluator:
    """``(run_dir, samples, cached) -> (predictions, labels)`` in a child process, until ``deadline``
    (``time.monotonic()``) or ``cancel``; files in ``workdir``."""

    def __init__(self, evaluate: EvaluateFn, device: str, workdir: Path, deadline: float,
                 cancel: threading.Event | None = None):  # fmt: skip
        self.evaluate, self.device, self.workdir = evaluate, device, Path(workdir)
        self.deadline, self.cancel = deadline, cancel
        self._n = 0

    def __call__(self, run_dir: Path, samples: Sequence[tuple[Path, str]], cached: bool) -> tuple[
        list[str | None], list[str]
    ]:  # fmt: skip
        name = name_of(self.evaluate)
        if name is None:  # cannot cross a process boundary: as before, in this process
            if cached:
                preds, labels, _ = cached_predict(self.evaluate, run_dir, samples, self.device)
                return preds, labels
            preds, labels = self.evaluate(run_dir, samples, self.device)
            save(run_dir, samples, preds, labels)
            return preds, labels
        out = self._in_child("evaluate", name, run_dir, samples, cached=cached)
        log.info("evaluation of %s in a child process: %d image(s) predicted, %d from the cache", run_dir,
                 out["asked"], len(samples) - out["asked"])  # fmt: skip
        return list(out["predictions"]), list(out["labels"])

    def scores(self, score: ScoreFn, run_dir: Path, samples: Sequence[tuple[Path, str]]) -> list[list[float] | None]:
        """``score(run_dir, samples, device)`` in a child process, under the same deadline; nothing is cached."""
        name = name_of(score)
        if name is None:
            return score(run_dir, samples, self.device)
        return list(self._in_child("scores", name, run_dir, samples, mode="scores")["scores"])

    def _in_child(self, kind: str, name: str, run_dir: Path, samples: Sequence[tuple[Path, str]],
                  **fields: Any) -> dict[str, Any]:  # fmt: skip
        """Write the request (``kind``-N.json), run the child until the deadline, read what it wrote."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._n += 1
        request, result = self.workdir / f"{kind}-{self._n}.json", self.workdir / f"{kind}-{self._n}.out.json"
        request.write_text(json.dumps({"evaluate": name, "run_dir": str(run_dir), "device": self.device,
                                       "samples": [[str(p), lab] for p, lab in samples], "result": str(result),
                                       **fields}))  # fmt: skip
        self._run(request)
        out: dict[str, Any] = json.loads(result.read_text())
        return out

    @staticmethod
    def _env() -> dict[str, str]:
        """No secrets; this process's import path, so the child finds the same evaluate function."""
        return child_env({"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})

    def _run(self, request: Path) -> None:
        log_path = self.workdir / "evaluate.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "admin.domain.evaluation_child", str(request)],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env(),
                                    start_new_session=True, preexec_fn=die_with_parent(signal.SIGKILL))  # fmt: skip
        while proc.poll() is None:
            if time.monotonic() > self.deadline or (self.cancel is not None and self.cancel.is_set()):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
                if self.cancel is not None and self.cancel.is_set():
                    raise EvaluationFailedError("cancelled during the evaluation")
                raise EvaluationTimeoutError("the gate's evaluation ran past the job's deadline (GRAFT_JOB_TIMEOUT_S "
                                             "covers training and evaluation): raise it, or keep the holdout smaller")
            time.sleep(0.2)
        if proc.returncode != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-10:]
            raise EvaluationFailedError(f"the evaluation process ended with status {proc.returncode}: "
                                        + "\n".join(tail))  # fmt: skip


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    request = json.loads(Path(argv[0]).read_text())
    run_dir, device = Path(request["run_dir"]), str(request["device"])
    samples = [(Path(p), str(label)) for p, label in request["samples"]]
    if request.get("mode") == "scores":
        score: ScoreFn = load_named(request["evaluate"])
        write_atomic(Path(request["result"]), json.dumps({"scores": score(run_dir, samples, device)}).encode())
        return 0
    evaluate: EvaluateFn = load_named(request["evaluate"])
    if request["cached"]:
        preds, labels, asked = cached_predict(evaluate, run_dir, samples, device)
    else:
        preds, labels = evaluate(run_dir, samples, device)
        save(run_dir, samples, preds, labels)
        asked = len(samples)
    write_atomic(Path(request["result"]), json.dumps({"predictions": preds, "labels": labels,
                                                       "asked": asked}).encode())  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
