"""Sample intake: which labels are acceptable, which images, and which split a sample belongs to.

Every item of a request is validated before anything is stored, and the store writes a batch in one
transaction: a request stores all its samples or none. The split (train or holdout) is a function of
the image's hash alone: the same image always lands in the same split, whoever posts it and however
often, so the holdout never leaks into training.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from admin.store.rows import SampleSplit, StoredSample
from admin.store.samples import NewSample, SampleStore, content_address
from graft.core.errors import GraftError, InvalidSampleError
from graft.core.images import inspect

MAX_LABEL_LENGTH = 64
_FORBIDDEN_IN_LABEL = set('/\\:*?"<>|')


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


def validate_label(raw: str | None) -> str:
    """A class name safe as a file name, a metric label and a JSON key; the reason when it is not."""
    if raw is None or raw == "":
        raise InvalidSampleError("missing label: send the class name in the 'label' form field")
    label = unicodedata.normalize("NFC", raw)
    if not label.strip():
        raise InvalidSampleError("empty label: the 'label' field is only whitespace")
    if label != label.strip():
        raise InvalidSampleError(f"label {label!r} has leading or trailing whitespace")
    if len(label) > MAX_LABEL_LENGTH:
        raise InvalidSampleError(f"label is {len(label)} characters long; at most {MAX_LABEL_LENGTH} are allowed")
    if any(unicodedata.category(ch).startswith("C") for ch in label):
        raise InvalidSampleError(f"label {label!r} contains control or invisible characters")
    if _FORBIDDEN_IN_LABEL & set(label) or label in (".", ".."):
        raise InvalidSampleError(f"label {label!r} contains a path separator or a character unsafe in file names")
    return label


def split_for(sha256_hex: str, holdout_fraction: float) -> SampleSplit:
    """``holdout`` for a fixed fraction of hashes, ``train`` for the rest; a pure function of the bytes."""
    bucket = int(sha256_hex[:8], 16) / 0x1_0000_0000
    return "holdout" if bucket < holdout_fraction else "train"


class SampleIntake:
    def __init__(self, store: SampleStore, holdout_fraction: float, max_image_pixels: int):
        self.store = store
        self.holdout_fraction = holdout_fraction
        self.max_image_pixels = max_image_pixels

    def check(self, upload: Upload, raw_label: str | None) -> NewSample:
        label = validate_label(raw_label)
        header = inspect(upload.data, self.max_image_pixels)
        sha = content_address(upload.data)
        return NewSample(upload.data, label, header, split_for(sha, self.holdout_fraction), sha)

    def accept(self, uploads: Sequence[Upload], labels: Sequence[str]) -> list[StoredSample]:
        """Validate every item first (the error names the item), then store them all in one transaction."""
        if len(labels) not in (1, len(uploads)):
            raise InvalidSampleError(f"{len(uploads)} files but {len(labels)} labels: send one label, or one per file")
        checked = []
        for i, up in enumerate(uploads):
            try:
                checked.append(self.check(up, labels[0] if len(labels) == 1 else labels[i]))
            except GraftError as e:
                where = f"item {i} ({up.filename!r}): " if len(uploads) > 1 else ""
                raise type(e)(f"{where}{e}") from e
        try:
            return self.store.add_many(checked)
        except GraftError as e:
            if len(uploads) > 1:
                raise type(e)(f"nothing from this batch was stored: {e}") from e
            raise
