"""One simulated retraining loop through the admin's own code (bench/loop_truth.py drives several).

What is real: the sample intake (its split, near-duplicate pinning) on a real SQLite file, the snapshot and
its manifest, the job's training configuration (``build_train_config``: the champion's choices replayed,
``--recipe auto`` deciding afresh), ``training.fit``, the evaluation the admin uses, the fair holdout and the
gate. What is left out: HTTP, TorchServe and the swap (tests/serving cover those), so a round costs what the
training and the evaluation cost.

Each round uploads a labelled batch, trains a candidate on the snapshot, and judges it twice on the same
predictions: with graft's first rule (raw accuracy on the whole holdout, tolerance 0) and with the current
gate (the fair holdout, the paired comparison). Every model is also scored on a truth set neither ever saw.
The loop serves what the current gate promotes; the first rule's served model is followed alongside.
"""

from __future__ import annotations

import io
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from admin.domain.gate import GateRule, decide
from admin.domain.judge import default_evaluate, judge, unaveraged_dir
from admin.domain.label_check import LabelCheck, check_new_samples
from admin.domain.labels import LabelSet
from admin.domain.paired import mcnemar_exact
from admin.domain.recipe import RetrainRequest, build_train_config
from admin.domain.samples import SampleIntake, Upload, base_files_by_split
from admin.domain.snapshot import Snapshot, base_items, take_snapshot, write_snapshot
from admin.store.db import Database
from admin.store.labels import LabelStore
from admin.store.rows import ModelVersion
from admin.store.samples import SampleStore
from graft.core.artifact import read_card
from graft.core.manifest import Item
from graft.core.util import utc_now
from training.config import TrainConfig

log = logging.getLogger("bench.loop_truth")
Labelled = tuple[bytes, str]  # image bytes (PNG or JPEG) and its true label


@dataclass
class Domain:
    name: str
    base_train: list[Labelled]  # the first model's training images
    base_val: list[Labelled]  # ... and its validation images (they become the admin's holdout)
    rounds: list[list[Labelled]]  # what each round uploads
    truth: list[tuple[Path, str]]  # files neither model ever sees
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig values of every training
    retrain: dict[str, Any] = field(default_factory=dict)  # RetrainRequest values of every retraining
    poisoned: dict[int, int] = field(default_factory=dict)  # round -> uploads of that round with a wrong label
    wrong_ids: set[str] = field(default_factory=set)  # their sample ids (the sha256 of their bytes)
    label_check: str = "hold"  # GRAFT_LABEL_CHECK: hold, note or off


@dataclass
class Round:
    domain: str
    seed: int
    round: int
    uploaded: int
    holdout_share: float  # of all uploads so far
    pinned: int  # uploads so far pinned as near-duplicates
    champion_truth: float
    candidate_truth: float
    truth_diff: float
    old_passed: bool  # graft's first rule: raw accuracy, whole holdout, tolerance 0
    old_n: int
    new_passed: bool
    new_n: int
    left_out: int
    discordant: int
    difference: float
    ci_low: float
    ci_high: float
    p_worse: float
    reason: str
    served_truth: float  # the served model's truth accuracy after this round (current gate)
    old_served_truth: float  # ... and under the first rule
    recipe: str
    seconds: float
    # The truth comparison itself: truth sets are finite too (ants/bees has 153 photos, so one photo is 0.65
    # points). Images only the candidate / only the champion got right, and the exact McNemar two-sided p.
    truth_cand_only: int = 0
    truth_champ_only: int = 0
    truth_p: float | None = None
    truth_n: int = 0  # how many truth images (0: a run from before it was recorded)
    poisoned: int = 0  # this round's uploads with a wrong label (bench/loop_truth.py --poison-round)
    # The data check (admin/domain/label_check.py) on the samples new since the champion's data: the labels it
    # flagged, its smallest adjusted p, the samples it listed and how many of those truly had a wrong label, how
    # many wrong labels were among the new samples, and whether it held a candidate the gate had passed.
    check_flagged: str = ""
    check_p: float | None = None
    check_suspects: int = 0
    check_true_suspects: int = 0
    wrong_new: int = 0
    held: bool = False
    # A candidate averaged with the champion (the default): the refit's own head's truth accuracy, its gate p
    # (significantly worse?), and whether the gate rejected the candidate because of it (admin.domain.gate).
    own_truth: float | None = None
    own_p_worse: float | None = None
    own_rejected: bool = False

    @property
    def promoted(self) -> bool:
        """Put in service: the gate passed it and the data check did not hold it."""
        return self.new_passed and not self.held


def _write(root: Path, items: Sequence[Labelled], split: str) -> None:
    for k, (data, label) in enumerate(items):
        ext = "jpg" if data[:2] == b"\xff\xd8" else "png"
        path = root / split / label / f"{k:05d}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


class Loop:
    def __init__(self, domain: Domain, seed: int, workdir: Path, fraction: float, rule: GateRule,
                 balanced: bool = True):  # fmt: skip
        self.d, self.seed, self.work, self.rule = domain, seed, workdir, rule
        workdir.mkdir(parents=True, exist_ok=True)
        self.base = workdir / "base"
        _write(self.base, domain.base_train, "train")
        _write(self.base, domain.base_val, "val")
        db = Database(workdir / "admin.sqlite3")
        self.store = SampleStore(db, workdir)
        labels = sorted({label for _, label in domain.base_train})
        self.labels = LabelSet(LabelStore(db))
        for label in labels:
            self.labels.resolve(label, may_add=True)
        self.fraction = fraction
        self.base_items = base_items(self.base, None, fraction)
        base = base_files_by_split(self.base_items)  # one object: the intake indexes it once, as the admin's
        self.intake = SampleIntake(self.store, self.labels, fraction, 50_000_000, 2_000_000_000, lambda: base,
                                   balanced=balanced)  # fmt: skip
        self._preds: dict[tuple[Path, Path], str | None] = {}
        self._truth: dict[Path, float] = {}
        self.uploaded = self.pinned = self.held = 0

    # ------------------------------------------------------------------ models
    def train(self, name: str, manifest: Path | None, champion: Path | None) -> Path:
        out = self.work / name
        if manifest is None:  # the first model: graft train on the folder, as a user would
            cfg = TrainConfig(data=self.base, output=out, seed=self.seed, device="cpu", **self.d.train)
        else:
            version = _version(champion) if champion is not None else None
            request = RetrainRequest(seed=self.seed, **self.d.retrain)
            cfg = build_train_config(manifest, out, version, self.d.train, request, device="cpu")
        from training.engine import fit

        fit(cfg)
        return out

    def predict(self, run: Path, items: Sequence[tuple[Path, str]]) -> list[str | None]:
        todo = [(p, lab) for p, lab in items if (run, p) not in self._preds]
        if todo:
            preds, _ = default_evaluate(run, todo, "cpu")
            self._preds.update({(run, p): y for (p, _), y in zip(todo, preds, strict=True)})
        return [self._preds[(run, p)] for p, _ in items]

    def truth(self, run: Path) -> float:
        if run not in self._truth:
            right = self.truth_right(run)
            self._truth[run] = sum(right) / len(right)
        return self._truth[run]

    def truth_right(self, run: Path) -> list[bool]:
        preds = self.predict(run, self.d.truth)
        return [p == t for p, (_, t) in zip(preds, self.d.truth, strict=True)]

    def truth_pairs(self, cand: Path, champ: Path) -> tuple[int, int, float]:
        pairs = list(zip(self.truth_right(cand), self.truth_right(champ), strict=True))
        b, c = sum(x and not y for x, y in pairs), sum(y and not x for x, y in pairs)
        return b, c, round(mcnemar_exact(b, c)[0], 6)

    # ------------------------------------------------------------------ one round
    def upload(self, batch: Sequence[Labelled]) -> None:
        for start in range(0, len(batch), 64):  # the API's batch limit
            chunk = batch[start : start + 64]
            stored = self.intake.accept([Upload(f"{k}.png", data) for k, (data, _) in enumerate(chunk)],
                                        [label for _, label in chunk], True)  # fmt: skip
            for s in stored:
                if not s.duplicate:
                    self.uploaded += 1
                    self.held += s.split == "holdout"
                    self.pinned += s.split_reason.startswith("near-duplicate")

    def check(self, champ: Path, since_seq: int, snap: Snapshot,
              earlier: list[tuple[str, dict[str, Any]]]) -> LabelCheck:  # fmt: skip
        """The admin's data check: the champion on the samples that arrived since its data, and what earlier
        rounds since it listed (nobody reviews them here: the loop runs unattended)."""
        version = _version(champ).model_copy(update={"version": champ.name, "max_sample_seq": since_seq})
        return check_new_samples(self.store, None, snap.holdout, snap.max_sample_seq, version,
                                 lambda run, images: self.predict(run, images), alpha=0.01, cap=500,
                                 earlier=earlier)  # fmt: skip

    def judge(self, cand: Path, champ: Path, holdout: list[Item]) -> tuple[Any, Any]:
        everything = [(i.path, i.label) for i in holdout]
        truth = [label for _, label in everything]
        labels_c, labels_h = read_card(cand).labels, read_card(champ).labels
        old = decide(truth, self.predict(cand, everything), labels_c, self.predict(champ, everything), labels_h,
                     policy="accuracy", tolerance=0.0, min_holdout=1)  # fmt: skip
        # The admin's own judge (the fair holdout, the paired rule, the refit alone when averaged), on this
        # loop's predictions.
        new, _ = judge(default_evaluate, cand, champ, holdout, self.rule,
                       run=lambda run, items, _cached: (self.predict(run, items), read_card(run).labels))  # fmt: skip
        return old, new


def _version(run: Path) -> ModelVersion:
    card = read_card(run)
    now = utc_now()
    return ModelVersion(version="1", status="accepted", source="job", run_dir=run, labels=card.labels,
                        recipe={"backbone": card.backbone, **card.recipe}, created_at=now, updated_at=now)  # fmt: skip


def run_loop(domain: Domain, seed: int, workdir: Path, fraction: float, rule: GateRule,
             balanced: bool = True) -> list[Round]:  # fmt: skip
    loop = Loop(domain, seed, workdir, fraction, rule, balanced)
    champion = old_champion = loop.train("v0", None, None)
    champion_seq = 0  # the newest sample the champion's data held
    checks: list[tuple[str, dict[str, Any]]] = []  # the data checks of the rounds since the champion
    log.info("%s seed %d: first model, truth %.4f", domain.name, seed, loop.truth(champion))
    rounds = []
    for r, batch in enumerate(domain.rounds, start=1):
        t0 = time.perf_counter()
        loop.upload(batch)
        snap = write_snapshot(take_snapshot(loop.store, loop.base_items), workdir / f"r{r}" / "manifest.json")
        check = loop.check(champion, champion_seq, snap, checks) if domain.label_check != "off" else None
        cand = loop.train(f"v{r}", snap.manifest, champion)
        old, new = loop.judge(cand, champion, snap.holdout)
        old_vs = loop.judge(cand, old_champion, snap.holdout)[0] if old_champion != champion else old
        c = new.comparison
        row = Round(
            domain.name, seed, r, loop.uploaded, round(loop.held / max(1, loop.uploaded), 4), loop.pinned,
            round(loop.truth(champion), 4), round(loop.truth(cand), 4),
            round(loop.truth(cand) - loop.truth(champion), 4), old.passed, old.candidate.n, new.passed,
            new.candidate.n, new.left_out, c.discordant if c else 0, c.difference if c else 0.0,
            c.ci_low if c else 0.0, c.ci_high if c else 0.0, c.p_worse if c else 1.0, new.reason,
            0.0, 0.0, _recipe(cand), round(time.perf_counter() - t0, 1),
        )  # fmt: skip
        row_champion = champion
        if check is not None:
            new_ids = {x.id for x in loop.store.between(champion_seq, snap.max_sample_seq)}
            listed = check.suspects + check.unreviewed
            row.check_flagged = ",".join(t.label for t in check.flagged) or ("unreviewed" if listed else "")
            row.check_p = min((t.p for t in check.labels), default=None)
            row.check_suspects = len({x.id for x in listed})
            row.check_true_suspects = len({x.id for x in listed} & domain.wrong_ids)
            row.wrong_new = len(new_ids & domain.wrong_ids)
            row.held = new.passed and check.needs_review and domain.label_check == "hold"
            checks.append((f"round {r}", check.as_dict()))
        if new.passed and not row.held:
            champion, champion_seq, checks = cand, snap.max_sample_seq, []
        old_champion = cand if old_vs.passed else old_champion
        row.truth_cand_only, row.truth_champ_only, row.truth_p = loop.truth_pairs(cand, row_champion)
        if (own := unaveraged_dir(cand)) is not None and new.unaveraged is not None:
            row.own_truth = round(loop.truth(own), 4)
            row.own_p_worse = round(new.unaveraged["p_worse"], 6)
            row.own_rejected = bool(new.unaveraged["rejected"])
        row.truth_n = len(domain.truth)
        row.poisoned = domain.poisoned.get(r, 0)
        row.served_truth, row.old_served_truth = round(loop.truth(champion), 4), round(loop.truth(old_champion), 4)
        log.info("%s seed %d round %d: %s", domain.name, seed, r, asdict(row))
        rounds.append(row)
    return rounds


def _recipe(run: Path) -> str:
    stages = read_card(run).recipe.get("trainable_stages")
    return "head" if not stages else f"last {stages}"


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def shuffled(items: list[Labelled], seed: int) -> list[Labelled]:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out
