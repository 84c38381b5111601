"""What the console's pages show, assembled from the service (plain dicts for the templates and the scripts)."""

from __future__ import annotations

import datetime as dt
from collections import deque
from pathlib import Path
from typing import Any

from admin.api.models import with_measured_holdout
from admin.domain.corrections import sees_splits
from admin.domain.service import AdminService, ModelView
from admin.store.rows import Actor, CaptureRow, Job, SampleMeta
from graft.core.errors import GraftError

LOG_LINES = 80
# The review queue's orders, as the page names them (the current one is shown in words).
REVIEW_ORDERS = {"margin": "smallest margin first: the answers the model was least sure of",
                 "entropy": "highest entropy first: the flattest answers",
                 "random": "random: a uniform draw, the baseline a labelling budget should beat"}  # fmt: skip


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start:
        return None
    t0 = dt.datetime.fromisoformat(start)
    t1 = dt.datetime.fromisoformat(end) if end else dt.datetime.now(t0.tzinfo)
    return round((t1 - t0).total_seconds(), 1)


# A finished job's outcome in words, where a running job shows its phase.
OUTCOMES = {
    "succeeded": "succeeded",
    "rejected": "rejected by the gate: the model in service stays",
    "held": "held: an admin decides",
    "failed": "failed: the model in service stays",
}


def job_view(job: Job, in_service: str | None = None) -> dict[str, Any]:
    """``in_service``: the default version now, shown as the champion of a running job that has not yet
    recorded the one it is judged against (it records it when it evaluates)."""
    gate = job.gate or {}
    champion = job.champion_version or (in_service if job.active else None)
    stage = job.phase if job.active else OUTCOMES.get(job.status, job.status)
    if job.status == "succeeded" and job.promoted:
        stage = f"promoted: version {job.candidate_version} is in service"
    elif job.status == "held":
        stage = _held(job, gate, in_service)
    return {
        "id": job.id, "status": job.status, "phase": job.phase, "progress": job.progress, "trigger": job.trigger,
        "active": job.active, "candidate": job.candidate_version, "champion": champion, "stage": stage,
        "champion_pending": job.champion_version is None and champion is not None,
        "reason": job.reason, "created_at": job.created_at, "seconds": _seconds(job.started_at, job.finished_at),
        "candidate_accuracy": (job.candidate_metrics or {}).get("accuracy"),
        "champion_accuracy": (job.champion_metrics or {}).get("accuracy"),
        "new_labels": gate.get("new_labels", []), "replay": job.replay, "promoted": job.promoted,
        "gate_summary": gate.get("summary"), "gate_policy": gate.get("policy"), "advice": gate.get("advice") or [],
        "regressed": gate.get("regressed") or [], "check": job.data_check, "listed": listed_samples(job.data_check),
    }  # fmt: skip


def listed_samples(data_check: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The samples a job's data check asks about: this check's suspects, then those earlier jobs listed."""
    check = data_check or {}
    return [*(check.get("suspects") or []), *(check.get("unreviewed") or [])]


def _held(job: Job, gate: dict[str, Any], in_service: str | None) -> str:
    """Why a held job waits (new labels, the data check, or both), or that an admin has since served it."""
    if in_service is not None and job.candidate_version == in_service:
        return f"held, then put in service by an admin: version {in_service} is in service"
    why = (["it adds labels"] if gate.get("new_labels") else []) + \
        (["the data check lists samples to review"] if (job.data_check or {}).get("needs_review") else [])  # fmt: skip
    return f"held: {' and '.join(why) or 'it waits'}, an admin decides"


def log_tail(job: Job, lines: int = LOG_LINES) -> str:
    if job.job_dir is None:
        return ""
    try:
        with open(Path(job.job_dir) / "train.log", errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except OSError:
        return ""


def model_view(
    view: ModelView, svc: AdminService | None = None, measured: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A version for the pages; with ``svc``, a version that has no holdout score of its own (the imported first
    model) shows the one a job measured while it was the champion, as ``/v1/models`` does (``measured``: those
    scores, looked up once for a page of several versions)."""
    if svc is not None:
        view = with_measured_holdout(svc, view, measured)
    m = view.model
    holdout = m.metrics.get("holdout") or {}
    training = m.metrics.get("training") or {}
    return {
        "version": m.version, "status": m.status, "default": view.default, "deployed": m.deployed,
        "promoted_at": view.promoted_at, "created_at": m.created_at, "source": m.source, "labels": m.labels,
        "holdout_accuracy": holdout.get("accuracy"), "holdout_n": holdout.get("n"),
        "val_accuracy": training.get("val_accuracy") or training.get("best_val_accuracy"),
        "refitted": m.recipe.get("refitted") if isinstance(m.recipe.get("refitted"), dict) else None,
        "per_class": holdout.get("per_class") or {}, "replay": m.metrics.get("replay"),
        "lineage": m.lineage, "recipe": m.recipe, "parent": m.parent_version, "job_id": m.job_id,
        "dataset_digest": m.dataset_digest, "num_train": m.num_train, "num_holdout": m.num_holdout,
        "plots": [name for name in PLOTS if m.run_dir is not None and (m.run_dir / PLOTS[name]).is_file()],
        "evidence": m.recipe.get("evidence") or m.recipe.get("auto"), "gate": m.metrics.get("gate"),
        "holdout_job": holdout.get("measured_by_job"), "recipe_rows": recipe_rows(m.recipe),
        "evidence_table": evidence_table(m.recipe.get("evidence") or m.recipe.get("auto")),
    }  # fmt: skip


_EVIDENCE_KEYS = ("evidence", "auto")  # what --recipe auto measured: shown as its own table, not inside the recipe


def plain(value: Any) -> str:
    """One recipe value in words: no JSON braces for a person to parse."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {plain(v)}" for k, v in value.items()) or "–"
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value) or "–"
    return str(value)


def recipe_rows(recipe: dict[str, Any]) -> list[tuple[str, str]]:
    """The recipe as (setting, value) rows; nested settings get dotted names (``phases.0.lr``)."""
    rows: list[tuple[str, str]] = []

    def walk(name: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{name}.{k}", v)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, v in enumerate(value):
                walk(f"{name}.{i}", v)
        else:
            rows.append((name, plain(value)))

    for key, value in recipe.items():
        if key not in _EVIDENCE_KEYS:
            walk(str(key), value)
    return rows


def evidence_table(evidence: Any) -> dict[str, Any] | None:
    """What ``--recipe auto`` measured: its facts (chosen, budget, rule...) and one row per candidate."""
    if not isinstance(evidence, dict) or not evidence:
        return None
    candidates = [c for c in evidence.get("candidates") or [] if isinstance(c, dict)]
    columns: list[str] = []
    for c in candidates:
        columns += [k for k in c if k not in columns]
    facts = [(k, plain(v)) for k, v in evidence.items() if k != "candidates"]
    return {"facts": facts, "columns": columns, "rows": [[plain(c.get(k)) for k in columns] for c in candidates]}


PLOTS = {"curves": "curves.png", "confusion": "confusion_matrix.png"}


def why_in_service(svc: AdminService, version: str) -> str:
    """The last change that made ``version`` the default, in words."""
    entries = [d for d in svc.history() if d.version == version]
    if not entries:
        return "not yet recorded"
    last = entries[-1]
    if last.action == "import":
        return "imported as the first model"
    if last.job_id:
        try:
            return svc.jobs.get(last.job_id).reason.split("; ")[0]
        except GraftError:
            pass
    return {"promote": "promoted by an admin", "rollback": "rolled back to"}.get(last.action, last.action)


def overview(svc: AdminService) -> dict[str, Any]:
    champion = svc.registry.champion()
    active = svc.jobs.active()
    stats = svc.stats()
    name = svc.model_name
    review = svc.feedback.review.stats(name) if name else None
    drift = None
    if review is not None and review.captured and champion is not None:
        try:
            drift = svc.feedback.drift_report(windows=1)["windows"][0]
        except GraftError:
            drift = None
    in_service = champion.version if champion else None
    return {
        "model_name": name, "champion": model_view(svc.model_view(champion.version), svc) if champion else None,
        "why": why_in_service(svc, champion.version) if champion else "",
        "job": job_view(svc.jobs.get(active), in_service) if active else None, "samples": stats,
        "review": review, "drift": drift, "warnings": svc.warnings, "problems": svc.ready_problems(),
    }  # fmt: skip


def review_item(row: CaptureRow) -> dict[str, Any]:
    at = dt.datetime.fromtimestamp(row.captured_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return {"id": row.id, "predicted": row.predicted, "score": row.scores[0] if row.scores else None,
            "margin": row.margin, "entropy": row.entropy, "version": row.model_version, "captured_at": at,
            "seen": row.seen, "scores": [[lab, s] for lab, s in zip(row.labels, row.scores, strict=True)],
            "image": f"/console/review/{row.id}/image"}  # fmt: skip


def change_words(svc: AdminService, current: str | None, target: str) -> list[str]:
    """What a promotion or rollback will change, said before it happens."""
    keep = svc.settings.keep_versions
    lines = [f"Version {target} becomes the default: every request without a version gets it from the next one on."]
    if current is not None:
        lines.append(f"Version {current} stops being the default; it stays loaded as a rollback target "
                     f"(the {keep} most recent defaults stay loaded).")  # fmt: skip
    target_model = svc.registry.get(target)
    if current is not None:
        now = svc.registry.get(current)
        added, dropped = set(target_model.labels) - set(now.labels), set(now.labels) - set(target_model.labels)
        if added:
            lines.append(f"New labels go into service: {', '.join(sorted(added))}.")
        if dropped:
            lines.append(f"Labels no longer predicted: {', '.join(sorted(dropped))}.")
    lines.append("No request fails during the switch; it can be rolled back from this console.")
    return lines


def label_rows(svc: AdminService, role: Actor = "admin") -> list[dict[str, Any]]:
    """The label set in key order, with counts: the samples page's table and the review page's keys. The counts
    per split are the admin's, as in ``GET /v1/labels`` (None for the samples token)."""
    counts = svc.samples.counts()
    served = set(svc.served_labels())
    splits = sees_splits(role)
    rows = []
    for i, label in enumerate(svc.labels.all(), start=1):
        c = counts.get(label.name, {})
        rows.append({"name": label.name, "key": i if i <= 9 else None, "source": label.source,
                     "in_service": label.name in served, "train": c.get("train", 0) if splits else None,
                     "holdout": c.get("holdout", 0) if splits else None, "total": sum(c.values())})  # fmt: skip
    return rows


def may_change(svc: AdminService, sample: SampleMeta, role: Actor) -> str | None:
    """None when ``role`` may relabel and delete ``sample``; else why not, in words."""
    try:
        svc.corrections.may_change(sample, role, "change")
    except GraftError as e:
        return str(e)
    return None
