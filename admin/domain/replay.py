"""Shadow replay: the latest captured traffic sent to a candidate before it becomes the default.

The champion's answers were recorded when the traffic was served, so only the candidate runs: its
explicit version is asked (``/predictions/NAME/VERSION``, with the no-capture header) while the
champion keeps answering every client. The report says how often the two agree on the top-1 label,
how confident each was (mean and a histogram), and which labels' predicted share moved most. An
optional gate (``replay_min_agreement``) turns a low agreement into a rejection.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from admin.store.rows import CaptureRow
from graft.core.errors import GraftError

log = logging.getLogger(__name__)

PredictFn = Callable[[bytes], list[tuple[str, float]]]
_BINS = 10


class ReplayRejectedError(GraftError):
    """The candidate disagrees with the champion on live traffic more than the gate allows."""

    status_code = 409


@dataclass(frozen=True)
class ReplayReport:
    candidate_version: str
    champion_version: str | None
    replayed: int  # captures sent
    answered: int  # of which the candidate answered
    agreement: float | None  # share of answered captures with the champion's top-1 label
    champion: dict[str, Any]  # confidence: mean top-1 score and a histogram over [0, 1]
    candidate: dict[str, Any]
    moved: list[dict[str, Any]]  # labels whose predicted share changed most
    seconds: float
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def confidence_summary(scores: Sequence[float]) -> dict[str, Any]:
    counts = [0] * _BINS
    for s in scores:
        counts[min(int(s * _BINS), _BINS - 1)] += 1
    return {
        "mean": round(sum(scores) / len(scores), 4) if scores else None,
        "histogram": {"edges": [round(i / _BINS, 2) for i in range(_BINS + 1)], "counts": counts},
    }


def share_changes(before: Sequence[str], after: Sequence[str], top: int = 5) -> list[dict[str, Any]]:
    """Per label, its share of top-1 answers before and after, the largest changes first."""
    b, a = Counter(before), Counter(after)
    nb, na = max(len(before), 1), max(len(after), 1)
    rows: list[dict[str, Any]] = [
        {"label": label, "champion_share": round(b[label] / nb, 4), "candidate_share": round(a[label] / na, 4),
         "change": round(a[label] / na - b[label] / nb, 4)}
        for label in sorted(set(b) | set(a))
    ]  # fmt: skip
    rows.sort(key=lambda r: -abs(float(r["change"])))
    return rows[:top]


def replay(
    predict: PredictFn,
    captures: Sequence[CaptureRow],
    image_bytes: Callable[[CaptureRow], bytes],
    candidate_version: str,
    champion_version: str | None,
    threads: int = 4,
) -> ReplayReport:
    """Send each capture's image to the candidate and compare with what the champion answered then."""
    t0 = time.monotonic()

    def ask(row: CaptureRow) -> tuple[CaptureRow, list[tuple[str, float]] | None]:
        try:
            return row, predict(image_bytes(row))
        except (OSError, GraftError) as e:  # pruned since, or refused: not evidence either way
            log.debug("replay of capture %s failed: %s", row.id, e)
            return row, None

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="replay") as pool:
        results = list(pool.map(ask, captures))
    answered = [(row, answer) for row, answer in results if answer]
    agree = sum(1 for row, answer in answered if answer[0][0] == row.predicted)
    report = ReplayReport(
        candidate_version=candidate_version,
        champion_version=champion_version,
        replayed=len(captures),
        answered=len(answered),
        agreement=round(agree / len(answered), 4) if answered else None,
        champion=confidence_summary([row.scores[0] for row, _ in answered]),
        candidate=confidence_summary([answer[0][1] for _, answer in answered]),
        moved=share_changes([row.predicted for row, _ in answered], [answer[0][0] for _, answer in answered]),
        seconds=round(time.monotonic() - t0, 2),
        note="" if answered else "no captured traffic of the champion to replay",
    )
    log.info("replay: version %s agreed with %s on %s of %d captures", candidate_version, champion_version,
             report.agreement, report.answered)  # fmt: skip
    return report


def check(report: ReplayReport, min_agreement: float | None) -> None:
    """Raise :class:`ReplayRejectedError` when the gate is on and the agreement falls below it.

    No traffic to replay is no evidence against the candidate: it passes, and the report says why."""
    if min_agreement is None or report.agreement is None:
        return
    if report.agreement < min_agreement:
        raise ReplayRejectedError(
            f"shadow replay: version {report.candidate_version} agreed with the champion on {report.agreement:.1%} "
            f"of {report.answered} captured inputs, below replay_min_agreement={min_agreement:.1%}"
        )
