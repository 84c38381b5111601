"""What the client commands print for a person: a progress bar, tables, a job's verdict in words."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO

from graft.client.folders import UploadReport


class ProgressBar:
    """``[#####.....] 12/24 label`` redrawn in place on a terminal; a line per quarter elsewhere (logs, CI)."""

    def __init__(self, what: str, stream: TextIO | None = None, width: int = 30):
        self.what, self.stream, self.width = what, stream or sys.stderr, width
        self.tty = self.stream.isatty()
        self._quarter = -1

    def __call__(self, done: int, total: int) -> None:
        share = done / total if total else 1.0
        if self.tty:
            filled = int(share * self.width)
            self.stream.write(f"\r{self.what} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total}")
            if done >= total:
                self.stream.write("\n")
        elif int(share * 4) > self._quarter:
            self._quarter = int(share * 4)
            self.stream.write(f"{self.what}: {done}/{total}\n")
        self.stream.flush()


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def upload_summary(report: UploadReport) -> str:
    lines = [
        f"stored {report.stored} new sample(s) ({report.holdout} of them kept for the holdout), "
        f"{report.duplicates} duplicate(s) already stored, {len(report.refused)} refused, "
        f"{len(report.skipped)} skipped"
    ]
    if report.by_label:
        rows = [(label, c["stored"], c["holdout"], c["duplicates"]) for label, c in sorted(report.by_label.items())]
        lines.append(table(rows, ("label", "stored", "holdout", "duplicates")))
    lines += [f"refused  {f}: {why}" for f, why in report.refused]
    lines += [f"skipped  {f}: {why}" for f, why in report.skipped]
    return "\n".join(lines)


def job_line(job: Any) -> str:
    return f"job {job.id}: {job.status} · {job.phase or '-'} · {100 * job.progress:.0f}%"


def verdict(job: Any) -> str:
    """The job's end in words."""
    cand = job.candidate_version
    if job.status == "succeeded" and job.promoted:
        head = f"promoted: version {cand} is in service"
    elif job.status == "rejected":
        head = f"rejected: version {cand} was kept out of service; the model in service is unchanged"
    elif job.status == "held":
        head = f"held: version {cand} waits for an admin (graft promote {cand})"
    elif job.status == "failed":
        head = "failed: nothing changed in service"
    else:
        head = job.status
    reason = job.reason
    lines = [head, f"reason: {reason}"] if reason else [head]
    if job.status == "rejected":
        lines.append("next: collect more (or cleaner) samples and retrain; `graft promote "
                     f"{cand} --force` puts it in service anyway")  # fmt: skip
    if suspects := getattr(job, "suspects", []):
        check = job.data.get("data_check") or {}
        total = check.get("suspect_count", 0) + len(check.get("unreviewed") or []) or len(suspects)
        shown = ", ".join(f"{s['id'][:12]} ({s['label']}, the model says {_says(s)})" for s in suspects[:5])
        lines.append(f"review: {total} sample(s) the model in service disagrees with: {shown}"
                     f"{' ...' if total > 5 else ''}; `graft suspects {job.id}` or the console's job page shows "
                     "them all; relabel or delete the wrong ones and retrain")  # fmt: skip
    return "\n".join(lines)


def holdout_accuracy(metrics: dict[str, Any]) -> str:
    for key in ("holdout", "candidate"):
        m = metrics.get(key)
        if isinstance(m, dict) and isinstance(m.get("accuracy"), int | float):
            return f"{m['accuracy']:.3f}"
    acc = metrics.get("accuracy")
    return f"{acc:.3f}" if isinstance(acc, int | float) else "-"


def models_table(models: dict[str, Any]) -> str:
    rows = [
        ("*" if m.get("default") else "", m["version"], m["status"], holdout_accuracy(m.get("metrics") or {}),
         m.get("num_train"), m.get("parent_version") or "-", m.get("created_at", "")[:19])
        for m in models.get("models", [])
    ]  # fmt: skip
    head = f"model {models.get('model_name') or '-'}; in service: version {models.get('default') or '-'}"
    return head + "\n" + table(rows, ("", "version", "status", "holdout acc", "train", "parent", "created"))


def review_table(items: Sequence[dict[str, Any]]) -> str:
    if not items:
        return "nothing to review: no unlabelled captures (is capture on? graft serve --capture-rate)"
    rows = []
    for it in items:
        scores = ", ".join(f"{s['label']} {s['score']:.2f}" for s in it.get("scores", [])[:3])
        rows.append((it["id"][:12], it["predicted"], f"{it['margin']:.3f}", scores, it.get("seen", 1),
                     it.get("captured_at", "")))  # fmt: skip
    return table(rows, ("capture", "predicted", "margin", "top scores", "seen", "captured"))


def _p(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "-"


def _says(suspect: dict[str, Any]) -> str:
    """``ants 0.97``: what the model in service says, and how sure it is (when the check scored it)."""
    said = suspect.get("predicted") or "-"
    conf = suspect.get("confidence")
    return f"{said} {conf:.2f}" if isinstance(conf, int | float) else said


def suspects_table(job: Any, console: str) -> str:
    """A job's data-check samples (the likeliest wrong label first when the check ranked them): full ids (to
    relabel or delete), the label given and the model's probability for it, what the model says."""
    suspects = job.suspects
    if not suspects:
        return f"job {job.id} ({job.status}): its data check lists no samples to review"
    rows = [(s["id"], s["label"], _p(s.get("label_probability")), _says(s), s.get("split", "")) for s in suspects]
    return "\n".join([
        f"job {job.id} ({job.status}): {len(suspects)} sample(s) to look at (the job's page: {console}/jobs/{job.id}; "
        f"one sample: {console}/samples/ID)",
        table(rows, ("sample", "label", "p(label)", "model says", "split")),
        "wrong label: graft relabel ID... --label LABEL; not a picture of any label: graft delete ID...; right "
        "after all: graft confirm ID... --label LABEL; then graft retrain",
    ])  # fmt: skip
