"""A look at new labels before they serve: does the model in service disagree with an unusual share of one
label's new samples?

The gate compares two models on the holdout, and a batch of wrong labels fools it: the mislabelled images
that land in the holdout reward the candidate that learnt them (docs/benchmarks/gate.md, part 12). The model
in service has seen none of them, so it can say what it thinks they are. Per label, the share of the new
samples (arrived since the champion's data) it disagrees with is set against the share of that label's older
holdout images it gets wrong. If the new samples were like the old ones, which images it disagrees with would
be a random draw from both: a one-sided Fisher exact test, Holm-corrected over the labels, and a floor on the
excess (a few odd pictures are not a batch). A flagged label holds the candidate for an admin and lists the
samples to look at. It is a reason to look, not a verdict: a new kind of picture (drift) looks the same here.

Pure functions over predictions; which samples are checked is :func:`plan`'s choice, and the job runs the
champion's predictions (admin/domain/job_gate.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from admin.domain.fairness import seen_by
from admin.domain.paired import holm
from admin.store.audit import AuditStore
from admin.store.rows import ModelVersion, SampleRef
from admin.store.samples import SampleStore
from graft.core.manifest import Item

MIN_EXCESS = 5  # disagreements beyond what the label's error rate explains, before a label is flagged
MAX_LISTED = 200  # suspects kept in the job record (the counts say how many there were)
MAX_SCORED = 2000  # suspects ranked by the model's probabilities before the first MAX_LISTED are kept


def fisher_greater(k: int, n: int, m: int, big_m: int) -> float:
    """One-sided Fisher exact p: ``k`` or more of the ``k + m`` disagreements among the ``n`` new images, when
    new (``n``) and old (``big_m``) images are equally likely to be disagreed with."""
    d, total = k + m, n + big_m
    if n == 0 or d == 0 or big_m == 0:
        return 1.0

    def log_comb(a: int, b: int) -> float:
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)

    norm = log_comb(total, n)
    tail = sum(math.exp(log_comb(d, x) + log_comb(total - d, n - x) - norm) for x in range(k, min(n, d) + 1))
    return min(1.0, tail)


@dataclass(frozen=True)
class LabelTally:
    label: str
    new: int  # new samples of the label checked
    disagreed: int  # ... the model in service predicted another label for
    baseline: int  # older holdout images of the label it did not train on
    missed: int  # ... it got wrong
    p: float  # one-sided Fisher exact, Holm-adjusted over the labels
    excess: float  # disagreements beyond the label's error rate on the older images
    flagged: bool

    @property
    def share(self) -> float:
        return self.disagreed / self.new if self.new else 0.0

    @property
    def error_rate(self) -> float:
        return self.missed / self.baseline if self.baseline else 0.0


@dataclass(frozen=True)
class Suspect:
    id: str  # the sample's id (GET /v1/samples/ID, the console's sample page)
    label: str  # the label it was uploaded with
    predicted: str | None  # what the model in service says it is
    split: str
    confidence: float | None = None  # the model's probability for what it says (None: not scored)
    label_probability: float | None = None  # ... for the label it was uploaded with: the lower, the likelier wrong


@dataclass(frozen=True)
class LabelCheck:
    champion: str  # the version that predicted
    labels: list[LabelTally]
    suspects: list[Suspect]  # the flagged labels' new samples the champion disagrees with (MAX_LISTED at most)
    new_samples: int  # new samples of labels the champion knows
    checked: int  # ... of which checked (at most the per-label cap each)
    alpha: float
    suspect_count: int = 0  # all of them, listed or not
    notes: list[str] = field(default_factory=list)
    # Samples an earlier job listed that nobody has reviewed since (same label, still stored, and no admin put
    # that job's candidate in service): listed again, and they hold the candidate too.
    unreviewed: list[Suspect] = field(default_factory=list)
    unreviewed_from: list[str] = field(default_factory=list)  # those jobs' ids

    @property
    def flagged(self) -> list[LabelTally]:
        return [t for t in self.labels if t.flagged]

    @property
    def needs_review(self) -> bool:
        return bool(self.flagged or self.unreviewed)

    def summary(self) -> str:
        earlier = (f"{len(self.unreviewed)} sample(s) listed by job {', '.join(self.unreviewed_from)} not reviewed "
                   "yet" if self.unreviewed else "")  # fmt: skip
        if not self.flagged:
            if earlier:
                return f"data check: {earlier}"
            if not self.checked and self.notes:
                return f"data check: {self.notes[0]}"
            return (f"data check: nothing unusual in {self.checked} new sample(s) "
                    f"(version {self.champion} agrees with their labels as often as with older ones)")  # fmt: skip
        parts = [f"version {self.champion} disagrees with {t.disagreed} of {t.new} new {t.label!r} samples "
                 f"({t.share:.0%}, against {t.error_rate:.0%} of older {t.label!r} holdout images it gets wrong; "
                 f"p = {t.p:.2g})" for t in self.flagged]  # fmt: skip
        return (f"data check: {'; '.join(parts)}: {self.suspect_count} sample(s) to review; wrong labels, or a new "
                f"kind of picture{'; and ' + earlier if earlier else ''}")  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["flagged"] = [t.label for t in self.flagged]
        out["needs_review"] = self.needs_review
        out["summary"] = self.summary()
        return out


@dataclass(frozen=True)
class CheckPlan:
    """What the champion predicts for the check: the chosen new samples and the older holdout images."""

    new: list[SampleRef]
    baseline: list[Item]
    new_samples: int
    notes: list[str]

    def images(self) -> list[tuple[Path, str]]:
        return [(s.path, s.label) for s in self.new] + [(i.path, i.label) for i in self.baseline]


def _capped(items: Sequence[Any], key: Any, cap: int) -> list[Any]:
    """At most ``cap`` per label, chosen by a stable key (a sample's id is its content hash: no bias by order)."""
    by_label: dict[str, list[Any]] = {}
    for item in sorted(items, key=key):
        group = by_label.setdefault(item.label, [])
        if len(group) < cap:
            group.append(item)
    return [x for group in by_label.values() for x in group]


def plan(new: Sequence[SampleRef], holdout: Sequence[Item], champion_run: Path, champion_labels: Sequence[str],
         cap: int) -> CheckPlan:  # fmt: skip
    """The new samples of labels the champion knows, and the older holdout images it did not train on (its
    validation images count: they flatter it a little, which the check's floor on the excess absorbs)."""
    known = set(champion_labels)
    fresh = [s for s in new if s.label in known]
    trained = seen_by(champion_run, validation=False)
    notes = []
    if not trained.known:
        notes.append(f"not run: the data the model at {champion_run} trained on cannot be listed (no lineage."
                     "dataset_path in its card, or that data is gone), so its training images could not be kept "
                     "out of the comparison")
        return CheckPlan([], [], len(fresh), notes)
    if not fresh:  # nothing new to set against the older images
        return CheckPlan([], [], 0, notes)
    new_paths = {s.path.resolve() for s in new}
    older = [i for i in holdout if i.label in known and (p := i.path.resolve()) not in new_paths
             and p not in trained.paths]  # fmt: skip
    return CheckPlan(_capped(fresh, lambda s: s.id, cap), _capped(older, lambda i: str(i.path), cap), len(fresh),
                     notes)  # fmt: skip


def judge_labels(plan_: CheckPlan, predictions: Sequence[str | None], champion: str, alpha: float,
                 min_excess: int = MIN_EXCESS, max_listed: int = MAX_LISTED) -> LabelCheck:  # fmt: skip
    """The check's finding from the champion's predictions on ``plan_.images()`` (in that order); the first
    ``max_listed`` suspects, by sample id."""
    if len(predictions) != len(plan_.new) + len(plan_.baseline):
        raise ValueError(f"{len(predictions)} predictions for {len(plan_.new) + len(plan_.baseline)} images")
    new_preds, old_preds = predictions[: len(plan_.new)], predictions[len(plan_.new) :]
    counts: dict[str, list[int]] = {}  # label -> [new, disagreed, baseline, missed]
    for s, pred in zip(plan_.new, new_preds, strict=True):
        if pred is not None:  # unreadable: no opinion
            c = counts.setdefault(s.label, [0, 0, 0, 0])
            c[0], c[1] = c[0] + 1, c[1] + (pred != s.label)
    for i, pred in zip(plan_.baseline, old_preds, strict=True):
        if pred is not None and i.label in counts:
            c = counts[i.label]
            c[2], c[3] = c[2] + 1, c[3] + (pred != i.label)
    labels = sorted(counts)
    raw = [fisher_greater(counts[lab][1], counts[lab][0], counts[lab][3], counts[lab][2]) for lab in labels]
    tallies = []
    for lab, p in zip(labels, holm(raw), strict=True):
        n, k, big_m, m = counts[lab]
        excess = k - n * m / big_m if big_m else 0.0
        tallies.append(LabelTally(lab, n, k, big_m, m, float(f"{p:.3g}"), round(excess, 2),
                                  big_m > 0 and p < alpha and excess >= min_excess))  # fmt: skip
    flagged = {t.label for t in tallies if t.flagged}
    suspects = [Suspect(s.id, s.label, pred, s.split) for s, pred in zip(plan_.new, new_preds, strict=True)
                if s.label in flagged and pred is not None and pred != s.label]  # fmt: skip
    notes = list(plan_.notes)
    notes += [f"no older {t.label!r} holdout images to compare its new samples with" for t in tallies if not t.baseline]
    return LabelCheck(champion, tallies, suspects[:max_listed], plan_.new_samples, len(plan_.new), alpha,
                      len(suspects), notes)  # fmt: skip


# (images with the labels they were given) -> per image [p of the model's answer, p of the given label], or None
Scorer = Callable[[list[tuple[Path, str]]], list[list[float] | None]]
RunScorer = Callable[[Path, list[tuple[Path, str]]], list[list[float] | None]]  # the same, of a run folder


def likeliest_wrong_first(s: Suspect) -> tuple[bool, float, str]:
    """Sort key: the smallest probability for the label given first; unscored ones last; then by id."""
    return s.label_probability is None, s.label_probability or 0.0, s.id


def ranked(suspects: Sequence[Suspect], paths: dict[str, Path], score: Scorer) -> list[Suspect]:
    """The suspects with the model's probabilities, the likeliest wrong label first (the smallest probability for
    the label given, as label-quality tools rank them); those it could not score last, by id."""
    scored = score([(paths[s.id], s.label) for s in suspects])
    if len(scored) != len(suspects):
        raise ValueError(f"{len(scored)} scores for {len(suspects)} suspects")
    out = [replace(s, confidence=p[0], label_probability=p[1]) if p else s for s, p in zip(suspects, scored,
                                                                                          strict=True)]  # fmt: skip
    return sorted(out, key=likeliest_wrong_first)


def unreviewed(earlier: Sequence[tuple[str, dict[str, Any]]], samples: SampleStore, up_to_seq: int,
               confirmed: dict[str, str] | None = None) -> tuple[list[Suspect], list[str]]:  # fmt: skip
    """The suspects of earlier checks (job id, its ``data_check``) still stored under the label they were listed
    with: nobody relabelled, deleted or confirmed them (``confirmed``: sample id -> the label an admin confirmed).
    Which earlier checks count is the caller's choice (those since the champion's job: putting a held candidate
    in service accepts its data)."""
    listed: dict[str, tuple[Suspect, str]] = {}
    for job_id, check in earlier:  # oldest first: the newest listing of a sample says it, the first job names it
        for s in check.get("suspects") or []:
            seen = Suspect(str(s["id"]), str(s["label"]), s.get("predicted"), str(s.get("split", "")),
                           s.get("confidence"), s.get("label_probability"))  # fmt: skip
            listed[seen.id] = (seen, listed[seen.id][1] if seen.id in listed else job_id)
    now = {r.id: r.label for r in samples.refs(listed, up_to_seq)}
    confirmed = confirmed or {}
    still = [(s, job) for s, job in listed.values() if now.get(s.id) == s.label and confirmed.get(s.id) != s.label]
    return sorted((s for s, _ in still), key=likeliest_wrong_first), sorted({job for _, job in still})


def check_new_samples(samples: SampleStore, audit: AuditStore | None, holdout: Sequence[Item], up_to_seq: int,
                      champion: ModelVersion, predict: Callable[[Path, list[tuple[Path, str]]], list[str | None]],
                      alpha: float, cap: int, earlier: Sequence[tuple[str, dict[str, Any]]] = (),
                      score: RunScorer | None = None) -> LabelCheck:  # fmt: skip
    """The check as a job runs it: the samples since the champion's data (up to the job's snapshot, ``up_to_seq``)
    and those whose label the samples token changed since the champion was made, predicted by ``predict``; and the
    suspects of ``earlier`` checks nobody has reviewed (:func:`unreviewed`). With ``score`` (the champion's
    probabilities), the suspects are listed the likeliest wrong first (:func:`ranked`)."""
    assert champion.run_dir is not None
    new = samples.between(champion.max_sample_seq, up_to_seq)
    confirmed: dict[str, str] = {}
    if audit is not None:  # a label the samples token changed is as new as an upload
        relabelled = set(audit.targets_since(champion.created_at, "sample.relabel", "samples"))
        new += samples.refs(relabelled - {s.id for s in new}, up_to_seq)
        confirmed = audit.confirmed_since(champion.created_at)
    vouched = [s for s in new if confirmed.get(s.id) == s.label]  # an admin looked: neither checked nor listed
    new = [s for s in new if confirmed.get(s.id) != s.label]
    chosen = plan(new, holdout, champion.run_dir, champion.labels, cap)
    if vouched:
        chosen = replace(chosen, notes=[*chosen.notes, f"{len(vouched)} sample(s) whose label an admin confirmed "
                                                       "are not checked"])  # fmt: skip
    predictions = predict(champion.run_dir, chosen.images()) if chosen.new else []
    check = judge_labels(chosen, predictions, champion.version, alpha,
                         max_listed=MAX_SCORED if score is not None else MAX_LISTED)  # fmt: skip
    if score is not None and check.suspects:
        run = champion.run_dir
        paths = {ref.id: ref.path for ref in chosen.new}
        check = replace(check, suspects=ranked(check.suspects, paths, lambda images: score(run, images)))
    check = replace(check, suspects=check.suspects[:MAX_LISTED])
    old, jobs = unreviewed(earlier, samples, up_to_seq, confirmed)
    listed = {s.id for s in check.suspects}
    old = [s for s in old if s.id not in listed]  # listed again by this check's own finding
    return replace(check, unreviewed=old[:MAX_LISTED], unreviewed_from=jobs)
