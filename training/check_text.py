"""``graft check``'s report for people: a summary, the class table, then each finding with a few examples."""

from __future__ import annotations

from typing import Any

from training.check import CheckReport, Finding

# Files listed per finding (--json lists them all): notes need fewer than problems; a duplicate group's line
# names its first few files.
EXAMPLES = {"error": 10, "warning": 10, "info": 3}
GROUP_FILES = 4


def _detail(d: dict[str, Any]) -> str:
    if "paths" in d:  # a duplicate group
        rows = list(zip(d["paths"], d["labels"], d["splits"], strict=True))
        more = f"  (+{len(rows) - GROUP_FILES} more)" if len(rows) > GROUP_FILES else ""
        return "  =  ".join(f"{p} ({label}, {split})" for p, label, split in rows[:GROUP_FILES]) + more
    if "path" in d:
        return f"{d['path']}: {d['reason']}" if "reason" in d else str(d["path"])
    if "labels" in d:
        return " / ".join(repr(label) for label in d["labels"])
    return ", ".join(f"{k} {v}" for k, v in d.items())


def _finding(f: Finding) -> list[str]:
    lines = [f"{f.severity.upper():<8}{f.code}: {f.message}"]
    shown = EXAMPLES[f.severity]
    lines += [f"          {_detail(d)}" for d in f.details[:shown]]
    if len(f.details) > shown:
        lines.append(f"          ... and {len(f.details) - shown} more (--json lists them all)")
    return lines


def _classes(report: CheckReport) -> list[str]:
    if not report.classes:
        return []
    width = max(12, *(len(repr(label)) for label in report.classes))
    lines = [f"  {'class':<{width}} {'train':>7} {'val':>7}"]
    for label, n in report.classes.items():
        lines.append(f"  {label!r:<{width}} {n.get('train', 0):>7} {n.get('val', 0):>7}")
    return lines


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def render_text(report: CheckReport) -> str:
    lines = [
        f"graft check {report.source}",
        f"  layout: {report.layout}",
        f"  images: {report.images} readable, {report.skipped} skipped; {len(report.classes)} classes",
        f"  formats: {_counts(report.formats)}; modes: {_counts(report.modes)}",
        *_classes(report),
        "",
    ]
    for f in report.findings:
        lines += _finding(f)
    if not report.findings:
        lines.append("no problem found")
    errors, warnings = report.count("error"), report.count("warning")
    verdict = "graft train would refuse this data" if errors else "graft train can use this data"
    notes = report.count("info")
    lines += ["", f"{errors} error(s), {warnings} warning(s), {notes} note(s) in {report.seconds:.1f} s: {verdict}"]
    return "\n".join(lines)
