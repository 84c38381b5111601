"""Corrections of the collected data: delete, relabel or confirm a sample, rename or merge a label.

Each correction is one transaction with its audit entry (who: the token's role; what; when; what it was), so
a correction that fails changes nothing and the trail never disagrees with the data. The rules:

* The samples token may correct only the samples it uploaded (the ``uploader`` column), never a holdout
  sample: the holdout judges every candidate, and whoever may upload must not be able to shape it.
* A relabelled sample keeps its split (a holdout picture stays holdout: its split follows its pixels).
* Rename and merge are the admin's, and never touch a label of the model in service: its name is in the
  model's output, and the base data it was trained on is replayed under that name.
* A job already running is not changed under it: its snapshot is a manifest of file paths, so a deleted
  sample's row goes now and its file waits in the trash until no job is active. Relabelling changes only the
  row, which the next snapshot reads.
* Captures labelled as a deleted sample go back to the review queue; their labels follow a relabel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from admin.domain.captures import CaptureIndex
from admin.domain.labels import LabelSet, SimilarLabelError, label_key, normalize_label
from admin.store.audit import AuditStore
from admin.store.captures import CaptureStore
from admin.store.db import Database
from admin.store.rows import Actor, Label, SampleMeta
from admin.store.samples import SampleStore
from graft.core.errors import ConflictError, NotFoundError, PermissionDeniedError, UserInputError
from graft.core.typos import similar

log = logging.getLogger(__name__)


def sees_splits(actor: Actor) -> bool:
    """Whether ``actor`` may know how the samples split into training and holdout (the admin only)."""
    return actor != "samples"


@dataclass(frozen=True)
class Deleted:
    sample: SampleMeta  # as it was
    requeued: list[str]  # captures back in the review queue
    file: str  # "deleted", or why it is kept for now
    audit_id: int


@dataclass(frozen=True)
class Relabelled:
    sample: SampleMeta  # as it is now
    previous: str
    audit_id: int | None  # None: it had that label already, nothing changed


@dataclass(frozen=True)
class Confirmed:
    sample: SampleMeta
    audit_id: int


@dataclass(frozen=True)
class LabelChange:
    label: Label  # as it is now (the target of a merge)
    previous: str
    samples: int  # samples that changed label
    audit_id: int


class Corrections:
    def __init__(
        self,
        db: Database,
        samples: SampleStore,
        labels: LabelSet,
        captures: CaptureStore,
        index: CaptureIndex,
        audit: AuditStore,
        in_service: Callable[[], list[str]],
        on_change: Callable[[Iterable[str]], None] = lambda labels: None,
    ):
        self.db = db
        self.samples = samples
        self.labels = labels
        self.captures = captures
        self.index = index
        self.audit = audit
        self.in_service = in_service  # the labels of the model in service
        self.on_change = on_change  # the labels whose counts changed (the metrics follow)
        # Sample files were deleted: what was derived from them goes too (the service prunes the frozen features).
        self.on_files_removed: Callable[[Sequence[Path]], None] = lambda paths: None

    # ------------------------------------------------------------------ samples
    def sample(self, sample_id: str) -> SampleMeta:
        sample = self.samples.get(sample_id)
        if sample is None:
            raise NotFoundError(f"no sample {sample_id!r} (deleted ones are in GET /v1/audit?action=sample.delete)")
        return sample

    def may_see(self, sample: SampleMeta, actor: Actor) -> None:
        """PermissionDeniedError when the samples token asks for a sample it did not upload: it lists and corrects
        only its own (GET /v1/samples), and which pictures are in the holdout, which judges every candidate
        model, is the admin's to know (GET /v1/samples/ID and the split counts are admin routes)."""
        if actor == "samples" and sample.uploader != "samples":
            raise PermissionDeniedError(f"sample {sample.id} was not uploaded with the samples token: only the admin "
                                        "token may see it")  # fmt: skip

    def may_change(self, sample: SampleMeta, actor: Actor, verb: str) -> None:
        """PermissionDeniedError when the samples token reaches beyond what it uploaded, or into the holdout."""
        if actor != "samples":
            return
        if sample.uploader != "samples":
            raise PermissionDeniedError(f"sample {sample.id} was not uploaded with the samples token: only the admin "
                                        f"token may {verb} it")  # fmt: skip
        if sample.split == "holdout":
            raise PermissionDeniedError(f"sample {sample.id} is in the holdout, which judges every candidate model: "
                                        f"only the admin token may {verb} it")  # fmt: skip

    def delete_sample(self, sample_id: str, actor: Actor) -> Deleted:
        sample = self.sample(sample_id)
        self.may_change(sample, actor, "delete")
        with self.db.tx():
            requeued, audit_id = self.remove_rows(sample, actor)
        self.after_removal([sample.label])
        return Deleted(sample, requeued, self.sweep(), audit_id)

    def remove_rows(self, sample: SampleMeta, actor: Actor, **why: Any) -> tuple[list[str], int]:
        """The rows of a deletion, inside the caller's transaction. Once it has committed, call
        :meth:`after_removal`, then :meth:`sweep` (never before: a rollback would bring back a row whose file
        is gone). The intake's in-memory index of holdout pictures keeps a deleted holdout picture until the
        next start: its near-duplicates stay pinned to the holdout meanwhile, which is the safe side."""
        requeued = self.captures.release_sample(sample.id)
        if not self.samples.remove(sample.id):
            raise NotFoundError(f"no sample {sample.id!r}: deleted meanwhile")
        audit_id = self.audit.record(actor, "sample.delete", sample.id, label=sample.label, split=sample.split,
                                     uploader=sample.uploader, requeued=requeued, **why)  # fmt: skip
        return requeued, audit_id

    def after_removal(self, labels: Iterable[str]) -> None:
        # Outside the transaction: the indexing thread takes the index's lock, then the database's.
        self.index.forget()  # cached hashes of samples and of queued captures changed
        self.on_change(labels)

    def relabel_sample(self, sample_id: str, raw_label: str, actor: Actor, new_label: bool = False) -> Relabelled:
        sample = self.sample(sample_id)
        self.may_change(sample, actor, "relabel")
        name = self.labels.check(raw_label, actor != "samples", new_label=new_label)
        if name == sample.label:
            return Relabelled(sample, sample.label, None)
        with self.db.tx():
            if not self.samples.set_label(sample.id, name):
                raise NotFoundError(f"no sample {sample.id!r}: deleted meanwhile")
            self.captures.relabel_sample(sample.id, name)
            self.labels.resolve(name, True, actor=actor)  # a new label (admin only, checked above) joins the set
            audit_id = self.audit.record(actor, "sample.relabel", sample.id, before=sample.label, after=name,
                                         split=sample.split)  # fmt: skip
        self.on_change([sample.label, name])
        log.info("sample %s relabelled %r -> %r (%s)", sample.id, sample.label, name, actor)
        return Relabelled(self.sample(sample.id), sample.label, audit_id)

    def confirm_sample(self, sample_id: str, raw_label: str, actor: Actor) -> Confirmed:
        """An admin looked and says the sample's label (``raw_label``, as they saw it) is right: the data check
        no longer lists it or counts it against its label (admin/domain/label_check.py). Not the samples
        token's: a confirmed sample no longer holds a candidate trained on it."""
        if actor == "samples":
            raise PermissionDeniedError("only the admin token may confirm a label: a confirmed sample no longer "
                                        "holds a candidate trained on it")  # fmt: skip
        sample = self.sample(sample_id)
        label = normalize_label(raw_label)
        if label != sample.label:
            raise ConflictError(f"sample {sample.id} is labelled {sample.label!r} now, not {label!r}: look at it "
                                "again, then confirm the label it has or relabel it")  # fmt: skip
        audit_id = self.audit.record(actor, "sample.confirm", sample.id, label=sample.label, split=sample.split)
        log.info("sample %s: label %r confirmed (%s)", sample.id, sample.label, actor)
        return Confirmed(sample, audit_id)

    def sweep(self) -> str:
        """Remove the files of deleted samples unless a job is active; what happened to them, in words."""
        removed, active = self.samples.sweep_trash()
        if active is not None:
            return f"kept until job {active} ends (a running job reads the files of its snapshot)"
        if removed:
            log.info("removed the files of %d deleted sample(s)", len(removed))
            self.on_files_removed(removed)
        return "deleted"

    # ------------------------------------------------------------------ labels
    def _not_in_service(self, label: Label, verb: str) -> None:
        if any(label_key(n) == label.key for n in self.in_service()):
            raise ConflictError(
                f"label {label.name!r} is a class of the model in service: it cannot be {verb}, because the model "
                "predicts that name and its base data is replayed under it; relabel samples one by one instead"
            )

    def rename_label(self, raw: str, to: str, actor: Actor, new_label: bool = False) -> LabelChange:
        """The same label (same key position, same samples) under another name."""
        label = self.labels.get(raw)
        name = normalize_label(to)
        if name == label.name:
            raise UserInputError(f"label {label.name!r} is already spelled that way")
        self._not_in_service(label, "renamed")
        existing = self.labels.store.get(label_key(name))
        if existing is not None and existing.key != label.key:
            merge = f'POST /v1/labels/{label.name}/merge {{"into": "{existing.name}"}}'
            raise ConflictError(f"label {existing.name!r} exists already: to put the samples of {label.name!r} under "
                                f"it, merge ({merge})")  # fmt: skip
        close = similar(name, [n for n in self.labels.known() if n != label.name])
        if existing is None and close and not new_label:
            raise SimilarLabelError(f"{name!r} is close to the existing label {close[0]!r}: merge into it if you "
                                    f"meant it, or send new_label=true to rename to {name!r} anyway")  # fmt: skip
        with self.db.tx():
            n = self.samples.move_label(label.name, name)
            self.captures.move_label(label.name, name)
            self.labels.store.rename(label.key, label_key(name), name)
            audit_id = self.audit.record(actor, "label.rename", label.name, to=name, samples=n)
        self.on_change([label.name, name])
        return LabelChange(self.labels.get(name), label.name, n, audit_id)

    def merge_label(self, raw: str, into: str, actor: Actor) -> LabelChange:
        """Every sample of ``raw`` goes under ``into``; ``raw`` leaves the label set (its key with it)."""
        label = self.labels.get(raw)
        try:
            target = self.labels.get(into)
        except NotFoundError as e:
            raise NotFoundError(f"no label {into!r} to merge into: to give {label.name!r} a new name, rename it "
                                f"(POST /v1/labels/{label.name}/rename {{\"to\": \"{into}\"}})") from e  # fmt: skip
        if target.key == label.key:
            raise UserInputError(f"label {label.name!r} cannot be merged into itself")
        self._not_in_service(label, "merged away")
        with self.db.tx():
            n = self.samples.move_label(label.name, target.name)
            self.captures.move_label(label.name, target.name)
            self.labels.store.remove(label.key)
            audit_id = self.audit.record(actor, "label.merge", label.name, into=target.name, samples=n)
        self.on_change([label.name, target.name])
        return LabelChange(target, label.name, n, audit_id)
