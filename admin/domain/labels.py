"""The label set the admin owns: who may use which class name, and what a class name may look like.

* The labels of the model in service are known; an admin may approve more (``POST /v1/labels``, or by
  posting a sample under a new label with the admin token). The samples token may use known labels only:
  anything else is a 403 that lists them. So an uploader cannot add classes to the model, with or without
  the auto-retrain trigger.
* Hygiene: NFKC normalisation (full-width "ａｎｔｓ" is "ants"), case-insensitive identity ("Ants" is "ants":
  the first spelling registered is the one used), no control, format, line- or paragraph-separator
  characters, no path characters, at most 64 characters and 128 UTF-8 bytes.
* The typo guard: a *new* label close to one the set has (admin/domain/typos.py: "baterry" beside "battery",
  "cafe" beside "café", "grey heron" beside "grey-heron") is refused (409, naming it) unless the caller
  confirms with ``new_label=true``, the admin token included: a typo would otherwise become a class.
* Keys: labels keep the order they joined the set (``position``), which the review page's keys 1-9 follow.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from admin.store.audit import AuditStore
from admin.store.labels import LabelStore
from admin.store.rows import Actor, Label
from graft.core.errors import ConflictError, InvalidSampleError, NotFoundError, PermissionDeniedError
from graft.core.typos import similar

MAX_LABEL_LENGTH = 64
MAX_LABEL_BYTES = 128
_FORBIDDEN_IN_LABEL = set('/\\:*?"<>|')
# Control and format characters (C*), and line and paragraph separators (Zl, Zp): invisible, or a line break
# in every log, metric and JSON consumer downstream.
_FORBIDDEN_CATEGORIES = ("C", "Zl", "Zp")


class UnknownLabelError(PermissionDeniedError):
    """A label the model in service does not know and no admin approved, posted with the samples token."""


class SimilarLabelError(ConflictError):
    """A new label close to an existing one, sent without ``new_label=true``: probably a typo."""


def _did_you_mean(names: list[str]) -> str:
    return " or ".join(repr(n) for n in names[:3])


def normalize_label(raw: str | None) -> str:
    """A class name safe as a file name, a metric label and a JSON key, in NFKC form; the reason when it is not."""
    if raw is None or raw == "":
        raise InvalidSampleError("missing label: send the class name in the 'label' form field")
    label = unicodedata.normalize("NFKC", raw)
    if not label.strip():
        raise InvalidSampleError("empty label: the 'label' field is only whitespace")
    if label != label.strip():
        raise InvalidSampleError(f"label {label!r} has leading or trailing whitespace")
    if len(label) > MAX_LABEL_LENGTH:
        raise InvalidSampleError(f"label is {len(label)} characters long; at most {MAX_LABEL_LENGTH} are allowed")
    if len(label.encode()) > MAX_LABEL_BYTES:
        raise InvalidSampleError(f"label is {len(label.encode())} bytes in UTF-8; at most {MAX_LABEL_BYTES}")
    if any(unicodedata.category(ch).startswith(_FORBIDDEN_CATEGORIES) for ch in label):
        raise InvalidSampleError(f"label {label!r} contains control, invisible or line-separator characters")
    if _FORBIDDEN_IN_LABEL & set(label) or label in (".", ".."):
        raise InvalidSampleError(f"label {label!r} contains a path separator or a character unsafe in file names")
    return label


def label_key(name: str) -> str:
    """What makes two spellings one label: NFKC, then case folding."""
    return unicodedata.normalize("NFKC", name).casefold()


class LabelSet:
    def __init__(self, store: LabelStore, audit: AuditStore | None = None):
        self.store = store
        self.audit = audit

    def known(self) -> list[str]:
        return [label.name for label in self.store.all()]

    def all(self) -> list[Label]:
        return self.store.all()

    def get(self, raw: str) -> Label:
        """The label ``raw`` names (any case or width); 404 when the set has none."""
        label = self.store.get(label_key(normalize_label(raw)))
        if label is None:
            raise NotFoundError(f"no label {raw!r} in the label set (GET /v1/labels lists them)")
        return label

    def check(self, raw: str | None, may_add: bool, *, new_label: bool = False, pending: Sequence[str] = ()) -> str:
        """The stored spelling of ``raw``, or its normal form when it is new and ``may_add`` (an admin);
        a new label without ``may_add`` is refused (403, listing the known ones), and a new label close to a
        known one (or to one of ``pending``, new in the same request) without ``new_label`` is refused (409).
        Nothing is written."""
        name = normalize_label(raw)
        known = self.store.get(label_key(name))
        if known is not None:
            return known.name
        same = [p for p in pending if label_key(p) == label_key(name)]
        if same:  # new in this request already, in another case or width: one label, the first spelling
            return same[0]
        names = self.known()
        close = similar(name, [*names, *pending])
        if not may_add:
            listing = ", ".join(names) or "none yet"
            hint = f"did you mean {_did_you_mean(close)}? " if close else ""
            raise UnknownLabelError(
                f"label {name!r} is not one the model in service knows or an admin has approved (known: {listing}); "
                f"{hint}an admin can approve it with POST /v1/labels"
            )
        if close and not new_label:
            raise SimilarLabelError(
                f"label {name!r} would be new, and it is close to {_did_you_mean(close)}: send that label if you "
                f"meant it; if {name!r} is a class of its own, send it again with new_label=true"
            )
        return name

    def resolve(self, raw: str | None, may_add: bool, *, actor: Actor = "admin", new_label: bool = True) -> str:
        """Like :meth:`check`, and a new label joins the set (recorded as the ``actor``'s). ``new_label``
        defaults to true here: callers resolve what they have checked already."""
        name = self.check(raw, may_add, new_label=new_label)
        label, added = self.store.insert(label_key(name), name, "admin")
        if added and self.audit is not None:
            self.audit.record(actor, "label.add", label.name, position=label.position)
        return label.name

    def approve(self, raw: str, *, actor: Actor = "admin", new_label: bool = False) -> Label:
        """An admin approves a label (the typo guard applies)."""
        name = self.resolve(raw, True, actor=actor, new_label=new_label)
        return self.get(name)

    def adopt(self, names: list[str]) -> None:
        """The labels of a model put in service join the set (their spelling wins over nothing)."""
        for name in names:
            self.store.add(label_key(name), name, "model")

    def remove(self, raw: str, in_service: list[str], *, actor: Actor = "admin") -> None:
        """Withdraw an approval: never a label of the model in service, never one with samples."""
        label = self.get(raw)
        if any(label_key(n) == label.key for n in in_service):
            raise ConflictError(f"label {label.name!r} belongs to the model in service and cannot be removed")
        if (n := self.store.sample_count(label.name)) > 0:
            raise ConflictError(
                f"label {label.name!r} has {n} stored sample(s): merge it into the right label "
                f"(POST /v1/labels/{label.name}/merge {{\"into\": NAME}}), or relabel or delete its samples first"
            )
        with self.store.db.tx():
            self.store.remove(label.key)
            if self.audit is not None:
                self.audit.record(actor, "label.remove", label.name, source=label.source)
