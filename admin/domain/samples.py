"""Sample intake: which labels and images are accepted, and which split a sample belongs to.

Every item of a request is checked before anything is stored, cheapest checks first (labels, then bytes
already stored, then image headers against a pixel budget, then full decoding), and the store writes a
batch in one transaction: a request stores all its samples or none, and a hostile one costs little CPU.

The split (train or holdout) is a function of the image's decoded pixels: the same picture lands in the
same split whoever posts it, in whatever file. A near-duplicate of a holdout image (a re-encoding, a crop
of a few pixels: its perceptual hash within a few bits) is pinned to the holdout, so the gate's holdout
never leaks into training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from admin.domain.labels import LabelSet
from admin.store.rows import SampleSplit, StoredSample
from admin.store.samples import NewSample, SampleStore, content_address
from graft.core.errors import ConflictError, GraftError, InvalidSampleError, TooManyPixelsError
from graft.core.images import Fingerprint, fingerprint, hamming, open_image, thumb_similarity

# dHash bits two images may differ by and still be "the same picture" (re-encodings differ by 0-4 here).
NEAR_DUPLICATE_BITS = 6
# ...and the thumbnails' correlation that confirms it (calibrated on Fashion-MNIST: README, "Near-duplicates").
SAME_PICTURE_SIMILARITY = 0.92
# A holdout image's perceptual hash and its file (the thumbnail is read from it only when the hash matches).
HoldoutPrint = tuple[int, Path]


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


def split_for(sha256_hex: str, holdout_fraction: float) -> SampleSplit:
    """``holdout`` for a fixed fraction of hashes, ``train`` for the rest; a pure function of the hash."""
    bucket = int(sha256_hex[:8], 16) / 0x1_0000_0000
    return "holdout" if bucket < holdout_fraction else "train"


def _where(i: int, up: Upload, n: int) -> str:
    return f"item {i} ({up.filename!r}): " if n > 1 else ""


class SampleIntake:
    def __init__(
        self,
        store: SampleStore,
        labels: LabelSet,
        holdout_fraction: float,
        max_image_pixels: int,
        max_batch_pixels: int,
        base_holdout_prints: Callable[[], list[HoldoutPrint]] = list,
    ):
        self.store = store
        self.labels = labels
        self.holdout_fraction = holdout_fraction
        self.max_image_pixels = max_image_pixels
        self.max_batch_pixels = max_batch_pixels
        self.base_holdout_prints = base_holdout_prints
        self._thumbs: dict[Path, bytes] = {}  # holdout images' thumbnails, read when a hash first matches

    def accept(self, uploads: Sequence[Upload], raw_labels: Sequence[str], may_add_labels: bool) -> list[StoredSample]:
        """Check every item (the error names the item), then store them all in one transaction."""
        try:
            return self._accept(uploads, raw_labels, may_add_labels)
        except GraftError as e:
            if len(uploads) > 1:
                raise type(e)(f"nothing from this batch was stored: {e}") from e
            raise

    def _accept(self, uploads: Sequence[Upload], raw_labels: Sequence[str], may_add_labels: bool) -> list[StoredSample]:
        n = len(uploads)
        if len(raw_labels) not in (1, n):
            raise InvalidSampleError(f"{n} files but {len(raw_labels)} labels: send one label, or one per file")
        names = [self._label(raw_labels[0] if len(raw_labels) == 1 else raw_labels[i], may_add_labels, i, up, n)
                 for i, up in enumerate(uploads)]  # fmt: skip
        out: dict[int, StoredSample] = {}
        todo: list[int] = []
        for i, up in enumerate(uploads):  # bytes already stored: nothing to decode
            stored = self.store.by_bytes(content_address(up.data))
            if stored is None:
                todo.append(i)
            elif stored.label != names[i]:
                raise ConflictError(f"{_where(i, up, n)}this image is already stored as sample {stored.id} "
                                    f"with label {stored.label!r}, not {names[i]!r}")  # fmt: skip
            else:
                out[i] = StoredSample(id=stored.id, label=stored.label, split=stored.split, duplicate=True,
                                      seq=stored.seq)  # fmt: skip
        self._check_pixel_budget([uploads[i] for i in todo])
        holdout = [*self.store.holdout_prints(), *self.base_holdout_prints()] if todo else []
        checked = {i: self._check(uploads[i], names[i], i, n, holdout) for i in todo}
        out.update(zip(checked, self.store.add_many(list(checked.values())), strict=True))
        for name in {names[i] for i in checked}:
            self.labels.resolve(name, may_add=True)  # a new label (admin only) joins the set once stored
        return [out[i] for i in range(n)]

    def _label(self, raw: str, may_add: bool, i: int, up: Upload, n: int) -> str:
        try:
            return self.labels.check(raw, may_add)
        except GraftError as e:
            raise type(e)(f"{_where(i, up, n)}{e}") from e

    def _check_pixel_budget(self, uploads: Sequence[Upload]) -> None:
        """Headers only: a batch of huge, compressible images is refused before any pixel is decoded."""
        total = 0
        for up in uploads:
            try:
                img = open_image(up.data, self.max_image_pixels)
            except GraftError:
                continue  # refused with its own reason when it is checked in full
            total += img.width * img.height
            img.close()
        if total > self.max_batch_pixels:
            raise TooManyPixelsError(
                f"this batch would decode {total} pixels; the limit per request is {self.max_batch_pixels}: "
                "send fewer or smaller images per request"
            )

    def _check(self, up: Upload, label: str, i: int, n: int, holdout: list[HoldoutPrint]) -> NewSample:
        try:
            fp = fingerprint(up.data, self.max_image_pixels)
        except GraftError as e:
            raise type(e)(f"{_where(i, up, n)}{e}") from e
        split = "holdout" if self._near_holdout(fp, holdout) else split_for(fp.pixels_sha, self.holdout_fraction)
        return NewSample(up.data, label, fp.header, split, content_address(up.data), fp.pixels_sha, fp.phash_hex)

    def _near_holdout(self, fp: Fingerprint, holdout: list[HoldoutPrint]) -> bool:
        """The same picture as a holdout image: the 64-bit hash within NEAR_DUPLICATE_BITS, confirmed by the
        thumbnails (on small, similar images such as 28x28 clothes on black, many different pictures fall
        within a few bits of each other; the thumbnails tell them apart)."""
        for phash, path in holdout:
            if hamming(fp.phash, phash) > NEAR_DUPLICATE_BITS:
                continue
            thumb = self._thumb(path)
            if thumb is None or thumb_similarity(fp.thumb, thumb) >= SAME_PICTURE_SIMILARITY:
                return True  # an unreadable holdout image: keep the old, cautious answer
        return False

    def _thumb(self, path: Path) -> bytes | None:
        if path not in self._thumbs:
            try:
                self._thumbs[path] = fingerprint(path.read_bytes(), self.max_image_pixels).thumb
            except (OSError, GraftError):
                return None
        return self._thumbs[path]
