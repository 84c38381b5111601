"""Judging a candidate: both models predict the fair holdout, and the gate decides on the pairs.

The evaluation runs through the training library (``training.evaluate``), as the archive would serve the
model (INT8 when it was exported so). Which holdout images count is :mod:`admin.domain.fairness`'s rule;
what the predictions mean is :mod:`admin.domain.gate`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from admin.domain.fairness import FairHoldout, fair_holdout, seen_by
from admin.domain.gate import GateDecision, GateRule, decide, with_unaveraged
from admin.domain.prediction_cache import cached_predict, save
from graft.core.artifact import MODEL_JSON, UNAVERAGED_DIR, read_card
from graft.core.manifest import Item

log = logging.getLogger(__name__)

EvaluateFn = Callable[[Path, Sequence[tuple[Path, str]], str], tuple[list[str | None], list[str]]]
FROZEN_FEATURES = "frozen-features"  # in the state folder: the frozen stages' output per holdout image
# (run folder, samples, the champion's cache used?) -> (predictions, labels): where the predictions run
PredictFn = Callable[[Path, Sequence[tuple[Path, str]], bool], tuple[list[str | None], list[str]]]
# (run folder, (image, given label) pairs, device) -> per image [p of the model's answer, p of the given label]
ScoreFn = Callable[[Path, Sequence[tuple[Path, str]], str], list[list[float] | None]]


def default_evaluate(
    run_dir: Path, samples: Sequence[tuple[Path, str]], device: str
) -> tuple[list[str | None], list[str]]:
    """Top-1 label per image (None when unreadable) and the run's labels, via the training library.

    The model is judged as its archive serves it: ``model.int8.onnx`` when it was exported with
    ``--quantize int8`` (or prepared like an INT8 champion), else its weights. A job's run keeps its frozen
    stages' output per holdout image in the state folder (:func:`frozen_features_root`).
    """
    return _evaluate(run_dir, samples, device, frozen_features_root(run_dir))


def evaluate_whole(
    run_dir: Path, samples: Sequence[tuple[Path, str]], device: str
) -> tuple[list[str | None], list[str]]:
    """:func:`default_evaluate` without keeping the frozen stages' output: for images a model is asked about once
    (the data check's new training samples), whose features would only take disk (64 KiB an image at most)."""
    return _evaluate(run_dir, samples, device, None)


def _evaluate(run_dir: Path, samples: Sequence[tuple[Path, str]], device: str,
              feature_cache: Path | None) -> tuple[list[str | None], list[str]]:  # fmt: skip
    from training.evaluate import evaluate_run
    from training.export_settings import serving_precision

    report = evaluate_run(run_dir, list(samples), device, precision=serving_precision(run_dir),
                          feature_cache=feature_cache)  # fmt: skip
    return list(report["predictions"]), list(report["labels"])


def for_new_samples(evaluate: EvaluateFn) -> EvaluateFn:
    """The evaluation the data check uses: the default one without its feature store, a test's stand-in as is."""
    return evaluate_whole if evaluate is default_evaluate else evaluate


def label_scores(run_dir: Path, samples: Sequence[tuple[Path, str]], device: str) -> list[list[float] | None]:
    """Per ``(image, label it was given)``: ``[the model's probability for its own answer, for the given label]``
    (None when unreadable, or the label is not the model's): how sure the model is that a label is wrong. Run as
    the model serves (INT8 included)."""
    from training.evaluate import predict_probabilities
    from training.export_settings import serving_precision

    probs, labels = predict_probabilities(run_dir, [p for p, _ in samples], device,
                                          precision=serving_precision(run_dir))  # fmt: skip
    pos = {label: i for i, label in enumerate(labels)}
    return [[round(max(row), 4), round(row[pos[label]], 4)] if row and label in pos else None
            for (_, label), row in zip(samples, probs, strict=True)]  # fmt: skip


def scores_for(evaluate: EvaluateFn) -> ScoreFn | None:
    """How the data check ranks what it lists: :func:`label_scores` beside the default evaluation; a test's
    stand-in evaluation may carry its own (a ``scores`` attribute), else the list stays in id order."""
    if evaluate is default_evaluate:
        return label_scores
    scores = getattr(evaluate, "scores", None)
    return scores if callable(scores) else None


def unaveraged_dir(run_dir: Path) -> Path | None:
    """The refit's own model beside a candidate averaged with the champion (training/distill.py), else None."""
    own = Path(run_dir) / UNAVERAGED_DIR
    return own if (own / MODEL_JSON).is_file() else None


def frozen_features_root(run_dir: Path) -> Path | None:
    """``STATE_DIR/frozen-features`` for a job's run (``STATE_DIR/jobs/ID/run``, and the un-averaged model in
    it), shared by every job's candidate and champion: a later job runs the frozen stages only on holdout
    images added since. None for a run outside the admin's jobs (the first model's predictions are cached per
    version anyway)."""
    run = Path(run_dir).resolve()
    run = run.parent if run.name == UNAVERAGED_DIR else run
    jobs = run.parent.parent
    return jobs.parent / FROZEN_FEATURES if jobs.name == "jobs" else None


def _predict(evaluate: EvaluateFn, run_dir: Path, samples: list[tuple[Path, str]], device: str,
             cached: bool = False, run: PredictFn | None = None) -> tuple[list[str | None], list[str]]:  # fmt: skip
    """``cached``: the run is a released version (the champion), whose answers on images it already predicted
    are read back instead of computed again; a candidate's are computed, then kept for when it is champion.
    ``run``: where to compute them (a child process: :mod:`admin.domain.evaluation_child`), else here."""
    if not samples:  # nothing fair to judge on: the labels still say what the model knows
        return [], list(read_card(run_dir).labels)
    if run is not None:
        return run(run_dir, samples, cached)
    if cached:
        preds, labels, asked = cached_predict(evaluate, run_dir, samples, device)
        log.info("gate: the champion predicted %d new holdout image(s), %d from its cache", asked,
                 len(samples) - asked)  # fmt: skip
        return preds, labels
    preds, labels = evaluate(run_dir, samples, device)
    save(run_dir, samples, preds, labels)
    return preds, labels


def judge(
    evaluate: EvaluateFn,
    candidate_dir: Path,
    champion_dir: Path | None,
    holdout: Sequence[Item],
    rule: GateRule,
    device: str = "cpu",
    run: PredictFn | None = None,
) -> tuple[GateDecision, FairHoldout]:
    """The gate's decision on the holdout images neither model trained or selected on."""
    seen = [("candidate", seen_by(candidate_dir))]
    if champion_dir is not None:
        seen.append(("champion", seen_by(champion_dir)))
    fair = fair_holdout(holdout, seen)
    samples = [(i.path, i.label) for i in fair.items]
    cand_pred, cand_labels = _predict(evaluate, candidate_dir, samples, device, run=run)
    champ_pred = champ_labels = None
    if champion_dir is not None:
        champ_pred, champ_labels = _predict(evaluate, champion_dir, samples, device, cached=True, run=run)
    truth = [label for _, label in samples]
    decision = decide(truth, cand_pred, cand_labels, champ_pred, champ_labels, rule=rule, left_out=fair.left_out)
    own_dir = unaveraged_dir(candidate_dir)
    if own_dir is not None and champ_pred is not None:  # averaged with the champion: the refit alone is judged too
        own_pred, own_labels = _predict(evaluate, own_dir, samples, device, run=run)
        own = decide(truth, own_pred, own_labels, champ_pred, champ_labels, rule=rule, left_out=fair.left_out)
        decision = with_unaveraged(decision, own)
    if fair.unknown:
        note = (f"the data the {' and the '.join(fair.unknown)} trained on could not be listed, so holdout images it "
                "saw may have graded it")  # fmt: skip
        log.warning("gate: %s", note)
        decision = _with_note(decision, note)
    return decision, fair


def _with_note(decision: GateDecision, note: str) -> GateDecision:
    return replace(decision, reason=f"{decision.reason}; {note}")
