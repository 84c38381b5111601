"""The intake's holdout index gives the same pins and duplicates as a brute-force scan over every holdout picture,
and reads each stored holdout row once per process, not once per batch."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance

from admin.domain.labels import LabelSet
from admin.domain.samples import HASH_SPLIT, SampleIntake, Upload, split_for
from admin.store.db import Database
from admin.store.labels import LabelStore
from admin.store.rows import StoredSample
from admin.store.samples import SampleStore
from graft.core.images import decode_rgb, fingerprint
from graft.core.likeness import RETRIEVE_SIMILARITY, RETRIEVE_TOP, coarse_similarity, compare, likeness
from training.fashion_mnist import FASHION_MNIST_DIR, FASHION_MNIST_LABELS, read_idx

pytestmark = pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                                reason="Fashion-MNIST (Debian's dataset-fashion-mnist) is not installed")  # fmt: skip
FRACTION = 0.3


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _altered(img: Image.Image, k: int) -> bytes:
    """A copy of the same picture in other bytes: upscaled, re-encoded, brightened or lightly cropped."""
    w, h = img.size
    kind = k % 4
    if kind == 0:
        return _png(img.resize((2 * w, 2 * h), Image.Resampling.BICUBIC))
    if kind == 1:
        return _jpeg(img.resize((3 * w, 3 * h), Image.Resampling.BILINEAR))
    if kind == 2:
        return _png(ImageEnhance.Brightness(img).enhance(1.15))
    return _png(img.crop((1, 1, w - 1, h - 1)).resize((56, 56), Image.Resampling.BICUBIC))


@pytest.fixture(scope="module")
def batches() -> list[tuple[list[Upload], list[str]]]:
    """180 test-set pictures, then altered copies of 60 of them interleaved with 60 new pictures, in batches of 40."""
    images = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    items = [(Image.fromarray(images[i], mode="L"), FASHION_MNIST_LABELS[labels[i]]) for i in range(240)]
    first = [(f"f{i}.png", _png(img), label) for i, (img, label) in enumerate(items[:180])]
    later = []
    for k in range(60):
        img, label = items[k * 3]  # every third of the first 240: some holdout, some train
        later.append((f"copy{k}.bin", _altered(img, k), label))
        new_img, new_label = items[180 + k]
        later.append((f"n{k}.png", _png(new_img), new_label))
    flat = first + later
    out = []
    for start in range(0, len(flat), 40):
        chunk = flat[start : start + 40]
        out.append(([Upload(name, data) for name, data, _ in chunk], [label for *_, label in chunk]))
    return out


def _intake(db: Database, root: Path) -> SampleIntake:
    # the pure hash split: these tests compare the likeness index against a brute-force scan of it
    return SampleIntake(SampleStore(db, root), LabelSet(LabelStore(db)), FRACTION, 1_000_000, 100_000_000,
                        balanced=False)


def _brute_force(look: object, holdout: list[tuple[str, object]]) -> str | None:
    """The reference: every earlier holdout picture scored, candidates ranked by outline, the first confirmed."""
    sims = [(coarse_similarity(item, look), pos, key, item) for pos, (key, item) in enumerate(holdout)]  # type: ignore[arg-type]
    ranked = sorted((s for s in sims if s[0] >= RETRIEVE_SIMILARITY), key=lambda s: (-s[0], s[1]))[:RETRIEVE_TOP]
    for _, _, key, item in ranked:
        if compare(look, item).same:  # type: ignore[arg-type]
            return key
    return None


def test_index_pins_and_duplicates_equal_a_brute_force_scan(tmp_path: Path, batches: list) -> None:
    db = Database(tmp_path / "db.sqlite3")
    intake = _intake(db, tmp_path)
    results: list[list[StoredSample]] = []
    for b, (uploads, labels) in enumerate(batches):
        if b == len(batches) // 2:
            intake = _intake(db, tmp_path)  # a restart: the new process indexes what the old one stored
        results.append(intake.accept(uploads, labels, True))
    again = intake.accept(*batches[0], True)  # the same bytes again: duplicates, by the bytes
    assert all(s.duplicate for s in again) and [s.id for s in again] == [s.id for s in results[0]]

    stored: dict[str, list[tuple[str, object]]] = {"holdout": [], "train": []}  # (id, likeness) before this batch
    for (uploads, _), answers in zip(batches, results, strict=True):
        added: list[tuple[str, str, object]] = []
        for up, s in zip(uploads, answers, strict=True):
            assert not s.duplicate
            look = likeness(decode_rgb(up.data, draft_size=512))
            by_hash = split_for(fingerprint(up.data).pixels_sha, FRACTION)
            other = "train" if by_hash == "holdout" else "holdout"
            twin = _brute_force(look, stored[other])  # the same picture already stored on the other side
            want = (other, f"near-duplicate of {twin}") if twin else (by_hash, HASH_SPLIT)
            assert (s.split, s.split_reason) == want, up.filename
            added.append((s.split, s.id, look))
        for split, sid, look in added:  # a batch is checked against what was stored before it
            stored[split].append((sid, look))
    pairs = [(u, s) for (ups, _), st in zip(batches, results, strict=True) for u, s in zip(ups, st, strict=True)]
    copies = [s.split for u, s in pairs if u.filename.startswith("copy") and s.split_reason.startswith("near-")]
    assert copies.count("holdout") >= 8, "altered copies of holdout pictures are pinned (the comparison is not vacuous)"
    assert copies.count("train") >= 3, "altered copies of training pictures whose hash says holdout stay in training"
    assert sum(s.split == "train" for st in results for s in st) > 120, "new pictures go by the hash split"


def test_each_stored_row_is_read_once_per_process(tmp_path: Path, batches: list, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:  # fmt: skip
    db = Database(tmp_path / "db.sqlite3")
    store = SampleStore(db, tmp_path)
    read: dict[str, list[int]] = {"holdout": [], "train": []}
    since = store.files_since

    def counted(split: str, seq: int) -> list:
        rows = since(split, seq)  # type: ignore[arg-type]
        read[split].extend(r[0] for r in rows)
        return rows

    monkeypatch.setattr(store, "files_since", counted)
    intake = SampleIntake(store, LabelSet(LabelStore(db)), FRACTION, 1_000_000, 100_000_000)
    for uploads, labels in batches:
        intake.accept(uploads, labels, True)
    for split in ("holdout", "train"):
        stored = [seq for seq, _, _ in since(split, 0)]  # type: ignore[arg-type]
        assert len(stored) > 40
        # Every batch but the last read only the rows stored since the batch before it: each row once.
        assert sorted(read[split]) == sorted(set(read[split])) and set(read[split]) <= set(stored)
        assert len(intake._mirrors[split].index) == len(stored)  # type: ignore[index]  # the rest added as stored


def test_copies_inside_one_batch_follow_their_holdout_original(tmp_path: Path) -> None:
    images = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    pics = [Image.fromarray(images[i], mode="L") for i in range(60)]
    held = [p for p in pics if split_for(fingerprint(_png(p)).pixels_sha, FRACTION) == "holdout"][:2]
    assert len(held) == 2
    a, b = held
    # copies before and after their original, in one request; their own hash would send most to train
    uploads = [Upload("a-copy1", _altered(a, 0)), Upload("a", _png(a)), Upload("a-copy2", _altered(a, 2)),
               Upload("b-copy", _altered(b, 3)), Upload("b", _png(b))]  # fmt: skip
    stored = _intake(Database(tmp_path / "db.sqlite3"), tmp_path).accept(uploads, ["x"], True)
    by_name = {u.filename: s for u, s in zip(uploads, stored, strict=True)}
    assert all(s.split == "holdout" for s in stored), {k: (s.split, s.split_reason) for k, s in by_name.items()}
    for name, twin in (("a-copy1", "a"), ("a-copy2", "a"), ("b-copy", "b")):
        s = by_name[name]
        if s.split_reason != HASH_SPLIT:  # pinned, not sent there by its own hash
            assert s.split_reason == f"near-duplicate of {by_name[twin].id}"
    assert sum(s.split_reason.startswith("near-duplicate") for s in stored) >= 2, "the check is not vacuous"
