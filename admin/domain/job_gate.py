"""A job's judgement of its candidate: the data check before training, the gate after it, and whether a
candidate that passed waits for an admin.

Both checks run their models out of the admin's process (:class:`admin.domain.evaluation_child.ChildEvaluator`),
until the job's deadline: the admin keeps serving while the models predict. The job thread
(:mod:`admin.domain.jobs`) calls these in order and acts on what they return.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from admin.domain.evaluation_child import ChildEvaluator, EvaluationTimeoutError
from admin.domain.gate import GateDecision, GateRule
from admin.domain.job_evaluation import InJobPredictions, JobEvaluationPlan
from admin.domain.job_services import JobServices
from admin.domain.judge import for_new_samples, judge, scores_for
from admin.domain.label_check import LabelCheck, check_new_samples
from admin.domain.snapshot import Snapshot
from admin.store.rows import ModelVersion
from graft.core.artifact import ModelCard, read_card
from graft.core.errors import GraftError

log = logging.getLogger(__name__)


def check_data(s: JobServices, job_id: str, job_dir: Path, snap: Snapshot, champion: ModelVersion | None,
               deadline: float, cancel: threading.Event | None) -> LabelCheck | None:  # fmt: skip
    """The model in service on the samples that arrived since its data (admin/domain/label_check.py)."""
    st = s.settings
    if st.label_check == "off" or champion is None or champion.run_dir is None:
        return None
    s.jobs.update(job_id, phase="checking")
    child = ChildEvaluator(for_new_samples(s.evaluate), st.eval_device, job_dir / "check", deadline, cancel)
    scorer = scores_for(s.evaluate)

    def score(run: Path, images: list[tuple[Path, str]]) -> list[list[float] | None]:
        assert scorer is not None
        try:
            return child.scores(scorer, run, images)
        except GraftError as e:  # the ranking is a convenience: the list is still right in id order
            if isinstance(e, EvaluationTimeoutError) or (cancel is not None and cancel.is_set()):
                raise
            log.warning("job %s: the data check's samples are listed unranked: %s", job_id, e)
            return [None] * len(images)

    check = check_new_samples(s.samples, s.audit, snap.holdout, snap.max_sample_seq, champion,
                              lambda run, images: child(run, images, True)[0], st.label_check_alpha,
                              st.label_check_max, s.jobs.checks_since(champion.created_at, champion.job_id),
                              score if scorer is not None else None)  # fmt: skip
    s.jobs.update(job_id, data_check=check.as_dict())
    log.info("job %s: %s", job_id, check.summary())
    return check


def hold_reasons(s: JobServices, job_id: str, decision: GateDecision, check: LabelCheck | None) -> list[str]:
    """Why a candidate that passed the gate waits for an admin (nothing: it may serve)."""
    why = []
    if decision.new_labels and not s.settings.promote_new_labels:
        why.append("a candidate that adds labels is put in service only by an admin")
    if check is not None and check.needs_review and s.settings.label_check == "hold":
        found = (f"found new {', '.join(repr(t.label) for t in check.flagged)} samples the model in service "
                 "disagrees with unusually often" if check.flagged else "has samples nobody reviewed yet")
        why.append(f"the data check {found}: look at them (graft suspects {job_id}, GET /v1/jobs/{job_id}: "
                   "data_check.suspects and unreviewed, or the console's job page), relabel or delete the wrong "
                   "ones, confirm the right ones and retrain; if they are all right, an admin puts this candidate "
                   "in service")  # fmt: skip
    return why


def register_candidate(s: JobServices, version: str, run_dir: Path, snap: Snapshot) -> ModelCard:
    """The trained run becomes the candidate version's record: labels, recipe, lineage and its data."""
    card = read_card(run_dir)
    s.registry.update(
        version,
        run_dir=run_dir.resolve(),
        labels=card.labels,
        recipe={"backbone": card.backbone, **card.recipe},
        lineage=card.lineage.model_dump(mode="json"),
        dataset_digest=snap.digest,
        max_sample_seq=snap.max_sample_seq,
        num_train=len(snap.train),
        num_holdout=len(snap.holdout),
        metrics={"training": card.metrics},
    )
    return card


def evaluate_candidate(s: JobServices, job_id: str, version: str, run_dir: Path, snap: Snapshot,
                       champion: ModelVersion | None, deadline: float, cancel: threading.Event | None,
                       in_job: JobEvaluationPlan | None = None) -> tuple[GateDecision, ModelCard]:  # fmt: skip
    """Prepare the candidate as the champion serves, record it, and judge both on the fair holdout."""
    s.jobs.update(job_id, phase="evaluating", progress=0.8)
    champion_dir = champion.run_dir if champion is not None else None
    s.prepare(run_dir, champion_dir)
    card = register_candidate(s, version, run_dir, snap)
    st = s.settings
    rule = GateRule(st.gate_policy, st.gate_tolerance, st.gate_floor, st.gate_min_holdout, st.gate_alpha,
                    st.holdout_fraction)  # fmt: skip
    child = ChildEvaluator(s.evaluate, st.eval_device, run_dir.parent / "evaluate", deadline, cancel)
    run = child if in_job is None else InJobPredictions(in_job, child)
    decision, fair = judge(s.evaluate, run_dir, champion_dir, snap.holdout, rule, st.eval_device, run=run)
    log.info("job %s: gate on %d fair holdout images (%d left out: seen by a model)", job_id, len(fair.items),
             fair.left_out)  # fmt: skip
    if decision.champion is not None:
        s.metrics.serving_accuracy.set(decision.champion.accuracy)
    gate = {"policy": decision.policy, "passed": decision.passed, "summary": decision.summary,
            "reason": decision.reason, "champion_version": champion.version if champion else None}  # fmt: skip
    s.registry.update(version, metrics={"training": card.metrics, "holdout": decision.candidate_all.as_dict(),
                                        "gate": gate})  # fmt: skip
    s.jobs.update(
        job_id,
        progress=0.9,
        gate=decision.as_dict(),
        champion_version=champion.version if champion else None,
        candidate_metrics=decision.candidate.as_dict(),
        champion_metrics=decision.champion.as_dict() if decision.champion else None,
    )
    log.info("job %s: %s", job_id, decision.reason)
    return decision, card
