"""The label set the admin owns: who may use which class name, and what a class name may look like.

* The labels of the model in service are known; an admin may approve more (``POST /v1/labels``, or by
  posting a sample under a new label with the admin token). The samples token may use known labels only:
  anything else is a 403 that lists them. So an uploader cannot add classes to the model, with or without
  the auto-retrain trigger.
* Hygiene: NFKC normalisation (full-width "ａｎｔｓ" is "ants"), case-insensitive identity ("Ants" is "ants":
  the first spelling registered is the one used), no control, format, line- or paragraph-separator
  characters, no path characters, at most 64 characters and 128 UTF-8 bytes.
"""

from __future__ import annotations

import unicodedata

from admin.store.labels import LabelStore
from admin.store.rows import Label
from graft.core.errors import ConflictError, InvalidSampleError, NotFoundError, PermissionDeniedError

MAX_LABEL_LENGTH = 64
MAX_LABEL_BYTES = 128
_FORBIDDEN_IN_LABEL = set('/\\:*?"<>|')
# Control and format characters (C*), and line and paragraph separators (Zl, Zp): invisible, or a line break
# in every log, metric and JSON consumer downstream.
_FORBIDDEN_CATEGORIES = ("C", "Zl", "Zp")


class UnknownLabelError(PermissionDeniedError):
    """A label the model in service does not know and no admin approved, posted with the samples token."""


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
    def __init__(self, store: LabelStore):
        self.store = store

    def known(self) -> list[str]:
        return [label.name for label in self.store.all()]

    def all(self) -> list[Label]:
        return self.store.all()

    def check(self, raw: str | None, may_add: bool) -> str:
        """The stored spelling of ``raw``, or its normal form when it is new and ``may_add`` (an admin);
        a new label without ``may_add`` is refused (403, listing the known ones). Nothing is written."""
        name = normalize_label(raw)
        known = self.store.get(label_key(name))
        if known is not None:
            return known.name
        if not may_add:
            listing = ", ".join(self.known()) or "none yet"
            raise UnknownLabelError(
                f"label {name!r} is not one the model in service knows or an admin has approved (known: {listing}); "
                "an admin can approve it with POST /v1/labels"
            )
        return name

    def resolve(self, raw: str | None, may_add: bool) -> str:
        """Like :meth:`check`, and a new label joins the set."""
        name = self.check(raw, may_add)
        return self.store.add(label_key(name), name, "admin").name

    def approve(self, raw: str) -> Label:
        name = normalize_label(raw)
        return self.store.add(label_key(name), name, "admin")

    def adopt(self, names: list[str]) -> None:
        """The labels of a model put in service join the set (their spelling wins over nothing)."""
        for name in names:
            self.store.add(label_key(name), name, "model")

    def remove(self, raw: str, in_service: list[str]) -> None:
        """Withdraw an approval: never a label of the model in service, never one with samples."""
        key = label_key(normalize_label(raw))
        label = self.store.get(key)
        if label is None:
            raise NotFoundError(f"no label {raw!r} in the label set (GET /v1/labels lists them)")
        if any(label_key(n) == key for n in in_service):
            raise ConflictError(f"label {label.name!r} belongs to the model in service and cannot be removed")
        if (n := self.store.sample_count(label.name)) > 0:
            raise ConflictError(f"label {label.name!r} has {n} stored sample(s) and cannot be removed")
        self.store.remove(key)
