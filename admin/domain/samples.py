"""Sample intake: which labels and images are accepted, and which split a sample belongs to.

Every item of a request is checked before anything is stored, cheapest checks first (labels, then bytes
already stored, then image headers against a pixel budget, then full decoding), and the store writes a
batch in one transaction: a request stores all its samples or none, and a hostile one costs little CPU.

The split (train or holdout) starts from a hash of the image's decoded pixels. A hash split alone drifts far from
its share on a few dozen uploads (a standard deviation of 6 points on 40 uploads at 20%), so each label's holdout
is kept within one image of its share (``balanced``, the default; ``GRAFT_HOLDOUT_SPLIT=hash`` for the hash
alone): where the hash's side would put it further off, the picture goes to the other side ("balanced split",
about 1 in 10).

A picture is placed once. The same bytes find the stored sample; the same picture in other bytes (re-encoded,
resized, lightly cropped, brightened: :mod:`graft.core.likeness`) goes where that stored image is: a copy of a
holdout image is pinned to the holdout, so the gate's holdout never leaks into training, and a copy of a training
image stays in training, so the holdout never holds a picture the models trained on. A different picture that
merely looks alike is not pinned. The stored sample says why it went where it did (``split_reason``: "hash split",
"balanced split", or "near-duplicate of <id>" on its twin's side).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from admin.domain.labels import LabelSet
from admin.store.rows import Actor, SampleSplit, StoredSample
from admin.store.samples import NewSample, SampleStore, conflict_message, content_address
from graft.core.errors import ConflictError, GraftError, InvalidSampleError, TooManyPixelsError
from graft.core.images import Fingerprint, fingerprint_decoded, open_image
from graft.core.likeness import Likeness, LikenessIndex, likeness
from graft.core.manifest import Item

# Kept for the capture queue's coarse collapsing (admin/domain/captures.py): dHash bits of "the same picture".
NEAR_DUPLICATE_BITS = 6
# The base data's image files per split (the same object while the base data is unchanged): indexed like samples.
BaseFiles = Mapping[SampleSplit, Sequence[Path]]
HASH_SPLIT = "hash split"
BALANCED_SPLIT = "balanced split"


def base_files_by_split(items: Iterable[Item]) -> dict[SampleSplit, list[Path]]:
    """The base data's files as the intake indexes them: its holdout, and everything else as training (the base's
    validation images are the holdout; see ``admin.domain.snapshot.base_items``)."""
    files: dict[SampleSplit, list[Path]] = {"holdout": [], "train": []}
    for item in items:
        files["holdout" if item.split == "holdout" else "train"].append(item.path)
    return files


# (capture id, when) of the erasure an image's fingerprint falls under, or None (CaptureIndex.erasure_of).
ErasureOf = Callable[[Fingerprint], tuple[str, str] | None]


class ErasedPictureError(ConflictError):
    """The picture (the same pixels or a near-duplicate) was erased at someone's request: it is not stored again."""


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


def split_for(sha256_hex: str, holdout_fraction: float) -> SampleSplit:
    """``holdout`` for a fixed fraction of hashes, ``train`` for the rest; a pure function of the hash."""
    bucket = int(sha256_hex[:8], 16) / 0x1_0000_0000
    return "holdout" if bucket < holdout_fraction else "train"


def balance(wanted: Sequence[tuple[str, SampleSplit, bool]], counts: Mapping[str, Mapping[str, int]],
            holdout_fraction: float) -> list[SampleSplit]:  # fmt: skip
    """Each item's split, in order, keeping every label's holdout within one image of its share.

    ``wanted``: (label, split, free) per item, where ``free`` means the hash chose the split (a pinned copy is not
    free: it goes where its twin is, and counts like any other); ``counts``: the label's stored samples per split.
    A free item goes to the other side when its own would leave the label's holdout more than one image away from
    ``holdout_fraction`` of its samples, and the other side is nearer."""
    tally = {label: [c.get("holdout", 0), c.get("train", 0) + c.get("holdout", 0)] for label, c in counts.items()}
    out: list[SampleSplit] = []
    for label, split, free in wanted:
        held, n = tally.setdefault(label, [0, 0])
        quota = holdout_fraction * (n + 1)
        other: SampleSplit = "train" if split == "holdout" else "holdout"
        off = {s: abs(held + (s == "holdout") - quota) for s in (split, other)}
        if free and off[split] > 1 and off[other] < off[split]:  # pinned copies may push it far: never further
            split = other
        tally[label] = [held + (split == "holdout"), n + 1]
        out.append(split)
    return out


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
        base_files: Callable[[], BaseFiles] = dict,
        erasure_of: ErasureOf = lambda fp: None,
        balanced: bool = True,
    ):
        self.store = store
        self.labels = labels
        self.holdout_fraction = holdout_fraction
        self.max_image_pixels = max_image_pixels
        self.max_batch_pixels = max_batch_pixels
        self.base_files = base_files  # a copy of a base picture goes where that picture is, like a sample's
        self.erasure_of = erasure_of  # set by the service once the capture index exists
        self.balanced = balanced  # each label's holdout within one image of its share (False: the hash alone)
        # Every stored picture of each split, read once per process: an upload that copies a holdout picture
        # goes to the holdout, one that copies a training picture goes to training, whatever its hash says.
        self._mirrors: dict[SampleSplit, _Mirror] = {"holdout": _Mirror(), "train": _Mirror()}
        self._synced_base: object = None  # the base files last indexed (the service caches them)
        self._sync_lock = threading.Lock()
        # One request places and stores at a time: without it, two requests at once each miss the other's pictures
        # (a copy could land on the other side from its twin, and the balance counts without the other's items).
        self._place_lock = threading.Lock()

    def accept(self, uploads: Sequence[Upload], raw_labels: Sequence[str], may_add_labels: bool, *,
               new_label: bool = False, uploader: Actor | None = None) -> list[StoredSample]:  # fmt: skip
        """Check every item (the error names the item), then store them all in one transaction.

        ``new_label``: the caller confirms that a new label close to a known one is meant (the typo guard);
        ``uploader``: the token's role, recorded on each new sample (by default what ``may_add_labels`` implies)."""
        who: Actor = uploader or ("admin" if may_add_labels else "samples")
        try:
            return self._accept(uploads, raw_labels, may_add_labels, new_label, who)
        except GraftError as e:
            if len(uploads) > 1:
                raise type(e)(f"nothing from this batch was stored: {e}") from e
            raise

    def _accept(self, uploads: Sequence[Upload], raw_labels: Sequence[str], may_add_labels: bool, new_label: bool,
                uploader: Actor) -> list[StoredSample]:  # fmt: skip
        n = len(uploads)
        if len(raw_labels) not in (1, n):
            raise InvalidSampleError(f"{n} files but {len(raw_labels)} labels: send one label, or one per file")
        names: list[str] = []
        for i, up in enumerate(uploads):  # each label also checked against the new ones before it
            raw = raw_labels[0] if len(raw_labels) == 1 else raw_labels[i]
            names.append(self._label(raw, may_add_labels, new_label, names, _where(i, up, n)))
        out: dict[int, StoredSample] = {}
        todo: list[int] = []
        for i, up in enumerate(uploads):  # bytes already stored: nothing to decode
            stored = self.store.by_bytes(content_address(up.data))
            if stored is None:
                todo.append(i)
            elif stored.label != names[i]:
                raise ConflictError(f"{_where(i, up, n)}{conflict_message(stored.id, stored.label, names[i])}")
            else:
                out[i] = StoredSample(id=stored.id, label=stored.label, split=stored.split, duplicate=True,
                                      seq=stored.seq, split_reason=stored.split_reason)  # fmt: skip
        self._check_pixel_budget([uploads[i] for i in todo])
        looked = {i: self._check(uploads[i], i, n) for i in todo}  # decoding runs beside other requests
        if looked:
            with self._place_lock:
                out.update(self._place(looked, uploads, names, uploader))
        for name in dict.fromkeys(names[i] for i in looked):
            self.labels.resolve(name, may_add=True, actor=uploader)  # a new label (admin only) joins once stored
        return [out[i] for i in range(n)]

    def _place(self, looked: dict[int, tuple[Fingerprint, Likeness]], uploads: Sequence[Upload], names: list[str],
               uploader: Actor) -> dict[int, StoredSample]:  # fmt: skip
        """Chooses each item's side and stores the batch, one request at a time (under ``_place_lock``): a request
        sees every picture stored before it, so a copy finds its twin and the balance counts the other's items."""
        n = len(uploads)
        self._sync_index()
        splits = self._splits(looked)
        if self.balanced:
            self._balance(splits, {i: names[i] for i in looked}, {i: look for i, (_, look) in looked.items()})
        checked = {i: (NewSample(uploads[i].data, names[i], fp.header, splits[i][0], content_address(uploads[i].data),
                                 fp.pixels_sha, fp.phash_hex, splits[i][1], uploader), look)
                   for i, (fp, look) in looked.items()}  # fmt: skip
        _pin_within(checked)
        order = list(checked)

        def still_not_erased(j: int, new: NewSample) -> None:
            """In the insert's transaction: an erasure committed since the early check refuses the batch (the
            erasure's sweep of stored samples is in its own transaction, so one of the two always sees the other)."""
            i = order[j]
            fp = Fingerprint(header=new.header, pixels_sha=new.pixels_sha, phash=int(new.phash, 16))
            self._refuse_erased(fp, _where(i, uploads[i], n))

        added = self.store.add_many([new for new, _ in checked.values()], guard=still_not_erased)
        with self._sync_lock:
            for (_, look), sample in zip(checked.values(), added, strict=True):
                if not sample.duplicate:
                    self._mirrors[sample.split].add(sample.id, look)  # later requests are checked against it
        return dict(zip(checked, added, strict=True))

    def _label(self, raw: str, may_add: bool, new_label: bool, pending: list[str], where: str) -> str:
        try:
            return self.labels.check(raw, may_add, new_label=new_label, pending=pending)
        except GraftError as e:
            raise type(e)(f"{where}{e}") from e

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

    def _check(self, up: Upload, i: int, n: int) -> tuple[Fingerprint, Likeness]:
        try:
            fp, look = _look(up.data, self.max_image_pixels)
        except GraftError as e:
            raise type(e)(f"{_where(i, up, n)}{e}") from e
        self._refuse_erased(fp, _where(i, up, n))  # early, before any file is written; again at the insert
        return fp, look

    def _splits(self, looked: dict[int, tuple[Fingerprint, Likeness]]) -> dict[int, tuple[SampleSplit, str]]:
        """Each item's split and why: its hash's, unless the same picture is already stored on the other side.
        The batch is matched against each side's index at once (one pass over the index per request)."""
        by_hash = {i: split_for(fp.pixels_sha, self.holdout_fraction) for i, (fp, _) in looked.items()}
        out: dict[int, tuple[SampleSplit, str]] = {i: (split, HASH_SPLIT) for i, split in by_hash.items()}
        sides: tuple[tuple[SampleSplit, SampleSplit], ...] = (("train", "holdout"), ("holdout", "train"))
        for side, other in sides:
            ask = [i for i, split in by_hash.items() if split == side]
            if not ask:
                continue
            twins = self._mirrors[other].index.match_many([looked[i][1] for i in ask])
            for i, twin in zip(ask, twins, strict=True):
                if twin is not None:
                    out[i] = (other, f"near-duplicate of {twin[0]}")
        return out

    def _balance(self, splits: dict[int, tuple[SampleSplit, str]], names: dict[int, str],
                 looks: dict[int, Likeness]) -> None:  # fmt: skip
        """Moves hash-split items whose side would put their label's holdout over a picture off its share.

        ``_splits`` looked for a twin on the other side only; an item about to move is first looked for on its own
        side too, and one found there stays with its twin (pinned, so it counts but never moves)."""
        order = sorted(splits)
        counts = self.store.counts_of(set(names.values()))
        while True:
            wanted = [(names[i], splits[i][0], splits[i][1] == HASH_SPLIT) for i in order]
            placed = dict(zip(order, balance(wanted, counts, self.holdout_fraction), strict=True))
            moving = [i for i in order if placed[i] != splits[i][0]]
            found = False
            for side in ("train", "holdout"):
                ask = [i for i in moving if splits[i][0] == side]
                if not ask:
                    continue
                for i, twin in zip(ask, self._mirrors[side].index.match_many([looks[i] for i in ask]), strict=True):
                    if twin is not None:
                        splits[i], found = (side, f"near-duplicate of {twin[0]}"), True
            if not found:
                break
        for i in moving:
            splits[i] = (placed[i], BALANCED_SPLIT)

    def _refuse_erased(self, fp: Fingerprint, where: str) -> None:
        if (erased := self.erasure_of(fp)) is not None:
            cid, when = erased
            raise ErasedPictureError(
                f"{where}this picture (the same pixels or a near-duplicate) was erased on {when} at someone's request "
                f"(DELETE /v1/review/{cid}): it is not stored again. Send another picture; the erasure is in the "
                f"audit trail (GET /v1/audit?action=review.erase). Erased by mistake? An admin lifts it with "
                f"DELETE /v1/erasures/{cid}"
            )

    def _sync_index(self) -> None:
        """Pictures not yet indexed are read once: samples stored since the last sync (by an earlier process, or a
        concurrent request) and the base data's pictures (each split's) when the base changed. Per batch this reads
        only the rows past each mirror's ``seq`` (seq only grows: AUTOINCREMENT), never a whole split."""
        with self._sync_lock:
            for split, mirror in self._mirrors.items():
                rows = self.store.files_since(split, mirror.seq)
                if rows:
                    mirror.seq = max(seq for seq, _, _ in rows)
                mirror.read([(sid, path) for _, sid, path in rows], self.max_image_pixels)
            base = self.base_files()
            if base is not self._synced_base:
                for split, paths in base.items():
                    self._mirrors[split].read([(f"base:{path.name}", path) for path in paths], self.max_image_pixels)
                self._synced_base = base


class _Mirror:
    """The likeness index of one split's stored pictures, kept current from the store (under the intake's lock)."""

    def __init__(self) -> None:
        self.index = LikenessIndex()
        self.indexed: set[str] = set()
        self.seq = 0  # stored samples of this split up to this seq are in the index

    def add(self, key: str, look: Likeness) -> None:
        if key not in self.indexed:
            self.index.add(key, look)
            self.indexed.add(key)

    def read(self, files: Sequence[tuple[str, Path]], max_pixels: int) -> None:
        for key, path in files:
            if key in self.indexed:
                continue
            try:
                _, look = _look(path.read_bytes(), max_pixels)
            except (OSError, GraftError):
                self.indexed.add(key)  # an unreadable file cannot be matched (the hash split applies)
                continue
            self.add(key, look)


def _pin_within(checked: dict[int, tuple[NewSample, Likeness]]) -> None:
    """Copies inside one batch: a picture whose copy in the same batch went to the holdout (by its hash, the
    balance, or a stored twin) goes there too, as it would have if the copy had been stored by an earlier request."""
    held = LikenessIndex()
    for sample, look in checked.values():
        if sample.split == "holdout":
            held.add(sample.sha256, look)  # the sample's id once stored
    if not len(held):
        return
    for i, (sample, look) in checked.items():
        if sample.split == "train" and (twin := held.match(look)) is not None:
            checked[i] = (replace(sample, split="holdout", split_reason=f"near-duplicate of {twin[0]}"), look)


def _look(data: bytes, max_pixels: int) -> tuple[Fingerprint, Likeness]:
    """What an image is (fingerprint) and looks like (likeness), from one decode."""
    fp, rgb = fingerprint_decoded(data, max_pixels, thumb=False)
    try:
        return fp, likeness(rgb)
    finally:
        rgb.close()
