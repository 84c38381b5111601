"""Drift: recent captured traffic compared with what the champion answered on its holdout.

Per time window (newest first), over the champion's own captured answers:

* the predicted-class distribution against the holdout's, as a **population stability index**
  ``PSI = sum((a - e) * ln(a / e))`` over labels (shares floored at 1e-4). The usual reading:
  below 0.1 stable, 0.1 to 0.25 a moderate shift, 0.25 and above a shift worth acting on;
* the mean top-1 confidence, and the share of low-margin answers (top-1 minus top-2 below
  ``low_margin``), beside the same numbers on the holdout.

The holdout profile (the reference) is computed once per champion version from its run folder on the
admin's holdout images and kept in the meta table.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from admin.store.captures import CaptureStore
from admin.store.db import Database
from admin.store.rows import ModelVersion

log = logging.getLogger(__name__)

ProbabilitiesFn = Callable[[Path, Sequence[Path], str], tuple[list[list[float]], list[str]]]
_FLOOR = 1e-4
MODERATE, SHIFTED = 0.1, 0.25


def default_probabilities(run_dir: Path, paths: Sequence[Path], device: str) -> tuple[list[list[float]], list[str]]:
    from training.evaluate import predict_probabilities

    return predict_probabilities(run_dir, paths, device)


@dataclass(frozen=True)
class Profile:
    n: int
    shares: dict[str, float]  # predicted-class distribution
    mean_confidence: float | None  # mean top-1 probability
    low_margin_share: float | None


def profile(answers: Sequence[tuple[str, float, float]], low_margin: float) -> Profile:
    """From (predicted label, top-1 score, margin) triples."""
    n = len(answers)
    if not n:
        return Profile(0, {}, None, None)
    counts = Counter(label for label, _, _ in answers)
    return Profile(
        n=n,
        shares={label: round(c / n, 4) for label, c in sorted(counts.items())},
        mean_confidence=round(sum(s for _, s, _ in answers) / n, 4),
        low_margin_share=round(sum(1 for _, _, m in answers if m < low_margin) / n, 4),
    )


def profile_of(whole: Mapping[str, tuple[int, float, int]], edges: Sequence[tuple[str, float, float]],
               low_margin: float) -> Profile:
    """:func:`profile` of a window given as tallies ({label: (n, sum of top-1, n under low_margin)}) and the
    answers at its edges: the same numbers as :func:`profile` over every answer of the window."""
    counts: Counter[str] = Counter()
    top1 = 0.0
    low = 0
    for label, (n, s, k) in whole.items():
        counts[label] += n
        top1, low = top1 + s, low + k
    for label, score, margin in edges:
        counts[label] += 1
        top1, low = top1 + score, low + (margin < low_margin)
    n = sum(counts.values())
    if not n:
        return Profile(0, {}, None, None)
    return Profile(
        n=n,
        shares={label: round(c / n, 4) for label, c in sorted(counts.items()) if c},
        mean_confidence=round(top1 / n, 4),
        low_margin_share=round(low / n, 4),
    )


def answers_from_probabilities(
    probs: Sequence[Sequence[float]], labels: Sequence[str]
) -> list[tuple[str, float, float]]:
    out = []
    for row in probs:
        if not row:
            continue  # unreadable image
        order = sorted(range(len(row)), key=lambda i: row[i], reverse=True)
        second = row[order[1]] if len(order) > 1 else 0.0
        out.append((labels[order[0]], float(row[order[0]]), float(row[order[0]] - second)))
    return out


def psi(expected: Mapping[str, float], actual: Mapping[str, float]) -> float:
    total = 0.0
    for label in set(expected) | set(actual):
        e, a = max(expected.get(label, 0.0), _FLOOR), max(actual.get(label, 0.0), _FLOOR)
        total += (a - e) * math.log(a / e)
    return round(total, 4)


def verdict(value: float | None) -> str:
    if value is None:
        return "too_few"
    return "shifted" if value >= SHIFTED else "moderate" if value >= MODERATE else "stable"


class DriftMonitor:
    def __init__(self, db: Database, captures: CaptureStore, probabilities: ProbabilitiesFn, device: str,
                 low_margin: float, min_captures: int):  # fmt: skip
        self.db = db
        self.captures = captures
        self.probabilities = probabilities
        self.device = device
        self.low_margin = low_margin
        self.min_captures = min_captures
        # One computation per version: the API and the background pass may ask at once, and each would
        # run the whole holdout through the model (seconds of CPU beside the inference workers).
        self._reference_lock = threading.Lock()
        if captures.window_margin() != low_margin:  # the tallies count low margins with this setting
            log.info("drift tallies rebuilt for low_margin %.3f", low_margin)
            captures.rebuild_windows(low_margin)

    def reference(self, model: ModelVersion, holdout: Callable[[], list[Path]]) -> Profile | None:
        """The champion's profile on the holdout images (computed once per version), None without a run."""
        key = f"drift_reference:{model.version}"
        with self._reference_lock:
            return self._reference(key, model, holdout)

    def _reference(self, key: str, model: ModelVersion, holdout: Callable[[], list[Path]]) -> Profile | None:
        cached = self.db.get_meta(key)
        if cached is not None:
            return Profile(**json.loads(cached))
        if model.run_dir is None or not model.run_dir.is_dir():
            return None
        images = holdout()
        if not images:
            return None
        t0 = time.monotonic()
        probs, labels = self.probabilities(model.run_dir, images, self.device)
        ref = profile(answers_from_probabilities(probs, labels), self.low_margin)
        self.db.set_meta(key, json.dumps(asdict(ref)))
        log.info("drift reference of version %s: %d holdout images in %.1fs", model.version, ref.n,
                 time.monotonic() - t0)  # fmt: skip
        return ref

    def report(self, model_name: str, champion: ModelVersion, reference: Profile | None, window_s: float,
               windows: int, now: float | None = None) -> dict[str, Any]:  # fmt: skip
        end = time.time() if now is None else now
        out = []
        for i in range(windows):
            hi, lo = end - i * window_s, end - (i + 1) * window_s
            whole, edges = self.captures.window(model_name, champion.version, lo, hi)
            traffic = profile_of(whole, edges, self.low_margin)
            out.append(self._window(lo, hi, traffic, reference))
        return {
            "model": model_name,
            "version": champion.version,
            "method": "psi",
            "thresholds": {"moderate": MODERATE, "shifted": SHIFTED},
            "low_margin": self.low_margin,
            "min_captures": self.min_captures,
            "reference": None if reference is None else {"source": "holdout", **asdict(reference)},
            "windows": out,
        }

    def _window(self, start: float, end: float, traffic: Profile, reference: Profile | None) -> dict[str, Any]:
        enough = reference is not None and traffic.n >= self.min_captures
        value = psi(reference.shares, traffic.shares) if enough and reference is not None else None
        moved: list[dict[str, Any]] = []
        if reference is not None and traffic.n:
            for label in set(reference.shares) | set(traffic.shares):
                r, t = reference.shares.get(label, 0.0), traffic.shares.get(label, 0.0)
                moved.append({"label": label, "holdout_share": r, "traffic_share": t, "change": round(t - r, 4)})
            moved.sort(key=lambda m: (-abs(float(m["change"])), str(m["label"])))
        return {
            "start": _iso(start), "end": _iso(end), "captures": traffic.n, "psi": value, "status": verdict(value),
            "mean_confidence": traffic.mean_confidence, "low_margin_share": traffic.low_margin_share,
            "shares": traffic.shares, "moved": moved[:5],
        }  # fmt: skip


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
