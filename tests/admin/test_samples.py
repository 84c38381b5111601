"""Sample intake and the sample store: labels, images, the split, content addressing, duplicates, batches."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest

from admin.domain.labels import LabelSet, normalize_label
from admin.domain.samples import NEAR_DUPLICATE_BITS, SampleIntake, Upload, split_for
from admin.store.db import Database
from admin.store.labels import LabelStore
from admin.store.samples import SampleStore
from graft.core.errors import (
    ConflictError,
    EmptyBodyError,
    InvalidSampleError,
    NotAnImageError,
    PermissionDeniedError,
    TooManyPixelsError,
    TruncatedImageError,
)
from graft.core.images import fingerprint, inspect
from graft.core.util import write_atomic
from tests.support.images import photo, solid


@pytest.mark.parametrize("label", ["ants", "bees", "Grey heron", "classe-2", "été", "a" * 64])
def test_good_labels_pass(label: str) -> None:
    assert normalize_label(label) == label


@pytest.mark.parametrize(
    ("label", "why"),
    [
        (None, "missing"),
        ("", "missing"),
        ("   ", "empty"),
        (" ants", "whitespace"),
        ("ants/../../etc", "path separator"),
        ("a\\b", "path separator"),
        ("..", "path separator"),
        ("ants\x00", "control"),
        ("ants\nbees", "control"),
        ("a\u200bb", "control"),  # zero-width space: invisible
        ("ants\u2028bees", "line-separator"),  # Zl
        ("ants\u2029bees", "line-separator"),  # Zp
        ("é" * 64 + "x", "characters long"),
        ("a" * 65, "characters long"),
    ],
)
def test_bad_labels_are_refused_with_the_reason(label: str | None, why: str) -> None:
    with pytest.raises(InvalidSampleError, match=why):
        normalize_label(label)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_supported_formats_decode(fmt: str) -> None:
    info = inspect(solid(fmt=fmt), max_pixels=10_000)
    assert (info.format, info.width, info.height) == (fmt, 16, 12)


def test_bad_images_get_typed_errors() -> None:
    with pytest.raises(EmptyBodyError):
        inspect(b"", 10_000)
    with pytest.raises(NotAnImageError):
        inspect(b"%PDF-1.4 definitely not an image" * 10, 10_000)
    jpeg = solid(size=(64, 64))
    with pytest.raises(TruncatedImageError):
        inspect(jpeg[: len(jpeg) // 2], 10_000)
    with pytest.raises(TooManyPixelsError):
        inspect(solid(size=(200, 200)), 10_000)
    assert NotAnImageError.status_code == 415 and TooManyPixelsError.status_code == 413


def test_split_is_a_pure_function_of_the_hash_with_the_asked_fraction() -> None:
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
    splits = [split_for(h, 0.2) for h in hashes]
    assert splits == [split_for(h, 0.2) for h in hashes]
    assert 0.17 < splits.count("holdout") / len(splits) < 0.23
    assert split_for("0" * 64, 0.2) == "holdout" and split_for("f" * 64, 0.2) == "train"


def test_write_atomic_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.bin"
    write_atomic(target, b"x" * 100)
    write_atomic(target, b"y" * 10)
    assert target.read_bytes() == b"y" * 10
    assert [p.name for p in target.parent.iterdir()] == ["b.bin"]


def make_intake(tmp_path: Path, **kw: object) -> SampleIntake:
    db = Database(tmp_path / "db.sqlite3")
    values: dict = {"holdout_fraction": 0.3, "max_image_pixels": 10_000, "max_batch_pixels": 1_000_000} | kw
    return SampleIntake(SampleStore(db, tmp_path), LabelSet(LabelStore(db)), **values)


@pytest.fixture
def intake(tmp_path: Path) -> SampleIntake:
    return make_intake(tmp_path)


def test_store_is_content_addressed_and_recognises_duplicates(intake: SampleIntake) -> None:
    data = solid()
    first = intake.accept([Upload("x.jpg", data)], ["ants"], True)[0]
    again = intake.accept([Upload("x.jpg", data)], ["ants"], True)[0]
    assert not first.duplicate and again.duplicate and again.id == first.id
    assert first.split == split_for(fingerprint(data).pixels_sha, 0.3), "the split follows the pixels, not the bytes"
    files = list((intake.store.root / "samples").rglob("*.jpg"))
    assert [f.stem for f in files] == [first.id]
    counts = intake.store.counts()
    assert counts == {"ants": {"train": int(first.split == "train"), "holdout": int(first.split == "holdout")}}
    with pytest.raises(ConflictError, match="already stored"):
        intake.accept([Upload("x.jpg", data)], ["bees"], True)


def test_store_survives_concurrent_uploads_of_the_same_bytes(intake: SampleIntake) -> None:
    data = solid((1, 2, 3), "PNG")
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(intake.accept([Upload("x", data)], ["ants"], True)[0]))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(not r.duplicate for r in results) == 1 and len(results) == 8
    assert intake.store.count() == 1


def test_a_batch_is_stored_whole_or_not_at_all(intake: SampleIntake) -> None:
    stored = intake.accept([Upload("a", solid((5, 5, 5)))], ["ants"], True)[0]
    batch = [Upload("b", solid((6, 6, 6))), Upload("c", solid((5, 5, 5)))]  # c is stored as "ants" already
    with pytest.raises(ConflictError, match="nothing from this batch was stored"):
        intake.accept(batch, ["bees"], True)
    with pytest.raises(ConflictError, match="twice in this request"):
        intake.accept([Upload("d", solid((7, 7, 7))), Upload("e", solid((7, 7, 7)))], ["ants", "bees"], True)
    assert intake.store.count() == 1 and intake.store.get(stored.id) is not None


def test_one_label_whatever_its_spelling(intake: SampleIntake) -> None:
    first = intake.accept([Upload("a", solid((10, 20, 30)))], ["ants"], True)[0]
    for spelling in ("Ants", "ANTS", "ａｎｔｓ"):  # case and full-width (NFKC) variants
        stored = intake.accept([Upload("b", solid((11, 21, 31 + len(spelling))))], [spelling], False)[0]
        assert stored.label == first.label == "ants"
    assert intake.labels.known() == ["ants"]


@pytest.mark.parametrize(
    ("new", "known", "close"),
    [
        ("baterry", ["ants", "battery"], ["battery"]),  # two edits in seven letters
        ("bese", ["bees"], ["bees"]),  # a swap is one edit
        ("cafe", ["café"], ["café"]),  # an accent
        ("grey heron", ["Grey-Heron"], ["Grey-Heron"]),  # case and separators
        ("cats", ["cat", "dog"], ["cat"]),
        ("wasps", ["ants", "bees"], []),
        ("7", ["1", "2", "3"], []),  # digits are all meant
        ("baterry", ["battery", "batery"], ["batery", "battery"]),  # closest first
    ],
)
def test_the_typo_guard_measure(new: str, known: list[str], close: list[str]) -> None:
    from graft.core.typos import similar

    assert similar(new, known) == close


def test_a_new_label_close_to_a_known_one_needs_a_confirmation(intake: SampleIntake) -> None:
    from admin.domain.labels import SimilarLabelError

    intake.labels.adopt(["battery"])
    with pytest.raises(SimilarLabelError, match="'battery'") as refused:
        intake.accept([Upload("a", solid((1, 2, 3)))], ["baterry"], True)
    assert refused.value.status_code == 409 and intake.store.count() == 0
    stored = intake.accept([Upload("a", solid((1, 2, 3)))], ["baterry"], True, new_label=True)[0]
    assert stored.label == "baterry" and intake.labels.known() == ["battery", "baterry"], "a new label goes last"
    two = intake.accept([Upload("b", solid((4, 5, 6))), Upload("c", solid((7, 8, 9)))], ["Wasps", "wasps"], True)
    assert [s.label for s in two] == ["Wasps", "Wasps"], "one new label in two spellings: the first one"
    assert intake.store.get(two[0].id).uploader == "admin"  # type: ignore[union-attr]


def test_the_samples_token_may_not_invent_labels(intake: SampleIntake) -> None:
    intake.labels.adopt(["ants", "bees"])
    with pytest.raises(PermissionDeniedError, match="known: ants, bees") as refused:
        intake.accept([Upload("a", solid())], ["'; DROP TABLE samples;--"], False)
    assert refused.value.status_code == 403 and "POST /v1/labels" in str(refused.value)
    assert intake.store.count() == 0 and intake.labels.known() == ["ants", "bees"], "nothing stored, no label added"
    intake.accept([Upload("a", solid())], ["wasps"], True)  # an admin may
    assert "wasps" in intake.labels.known()


def test_the_same_pixels_in_other_bytes_are_the_same_sample(intake: SampleIntake) -> None:
    data = solid((40, 50, 60), "PNG", (32, 32))
    first = intake.accept([Upload("a", data)], ["ants"], True)[0]
    padded = data + b"\x00trailing bytes the decoder ignores"
    again = intake.accept([Upload("b", padded)], ["ants"], True)[0]
    assert again.duplicate and again.id == first.id
    with pytest.raises(ConflictError, match="already stored"):
        intake.accept([Upload("c", padded)], ["bees"], True)
    assert intake.store.count() == 1


def test_near_duplicates_of_holdout_images_stay_holdout(tmp_path: Path) -> None:
    from PIL import Image

    from tests.support.images import encode

    base = Image.effect_noise((64, 64), 40).convert("RGB")
    held = tmp_path / "holdout.png"
    held.write_bytes(encode(base, "PNG"))
    intake = make_intake(tmp_path, holdout_fraction=0.0001, base_files=lambda: {"holdout": [held]})
    copy = encode(base, "JPEG", quality=70)  # re-encoded: other bytes, other pixels, the same picture
    stored = intake.accept([Upload("copy.jpg", copy)], ["ants"], True)[0]
    assert stored.split == "holdout", "a near-duplicate of a holdout image never reaches training"
    other = intake.accept([Upload("other.png", encode(Image.effect_noise((64, 64), 40).convert("RGB"), "PNG"))],
                          ["ants"], True)[0]  # fmt: skip
    assert other.split == "train"


def _gradient_with_checks(phase: int) -> bytes:
    """A strong left-to-right gradient (what the 64-bit hash sees) under an 8-px checkerboard of +-15 levels
    (what only the thumbnail sees); ``phase`` 0 or 1 flips the checkerboard."""
    from PIL import Image

    from tests.support.images import encode

    img = Image.new("L", (64, 64))
    checks = [15 if ((x // 8) + (y // 8) + phase) % 2 else -15 for y in range(64) for x in range(64)]
    img.putdata([220 - 3 * (i % 64) + c for i, c in enumerate(checks)])
    return encode(img.convert("RGB"), "PNG")


def _decode(data: bytes) -> Any:
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def test_a_different_picture_that_looks_alike_is_not_pinned_to_the_holdout(tmp_path: Path) -> None:
    """Small, similar pictures (28x28 clothes on black) share their outline; the detail decides."""
    from graft.core.images import hamming
    from graft.core.likeness import coarse_similarity, compare, likeness
    held = tmp_path / "holdout.png"
    held.write_bytes(_gradient_with_checks(0))
    other = _gradient_with_checks(1)
    a, b = fingerprint(held.read_bytes()), fingerprint(other)
    assert hamming(a.phash, b.phash) <= NEAR_DUPLICATE_BITS, "the coarse hash calls them the same"
    la, lb = likeness(_decode(held.read_bytes())), likeness(_decode(other))
    assert coarse_similarity(la, lb) > 0.7, "retrieval finds it as a candidate"
    assert not compare(la, lb).same, "the detail says different"
    intake = make_intake(tmp_path, holdout_fraction=0.0001, base_files=lambda: {"holdout": [held]})
    first = intake.accept([Upload("other.png", other)], ["ants"], True)[0]
    assert first.split == "train" and first.split_reason == "hash split"
    again = intake.accept([Upload("again.png", _gradient_with_checks(0) + b"\x00")], ["ants"], True)[0]
    assert again.split == "holdout" and again.split_reason == "near-duplicate of base:holdout.png"


def test_altered_copies_of_a_holdout_picture_are_pinned_and_say_so(tmp_path: Path) -> None:
    from PIL import Image

    from tests.support.images import encode

    held = tmp_path / "held.png"
    held.write_bytes(photo(7))
    intake = make_intake(tmp_path, holdout_fraction=0.0001, base_files=lambda: {"holdout": [held]})
    original = _decode(photo(7))
    w, h = original.size
    copies = {
        "jpeg q50": encode(original, "JPEG", quality=50),
        "0.8x": encode(original.resize((int(w * 0.8), int(h * 0.8)), Image.Resampling.BILINEAR), "PNG"),
        "2-px crop": encode(original.crop((2, 2, w, h)), "PNG"),
        "brighter": encode(Image.eval(original, lambda v: min(255, int(v * 1.1))), "PNG"),
        "darker": encode(Image.eval(original, lambda v: int(v * 0.9)), "PNG"),
    }
    for name, data in copies.items():
        got = intake.accept([Upload(f"{name}.png", data)], ["ants"], True)[0]
        assert got.split == "holdout" and got.split_reason == "near-duplicate of base:held.png", name
    others = [intake.accept([Upload(f"o{k}.png", photo(100 + k))], ["ants"], True)[0] for k in range(20)]
    assert all(o.split == "train" for o in others), "different pictures go by the hash split"
    assert intake.store.get(others[0].id).split_reason == "hash split"  # type: ignore[union-attr]


def test_a_batch_over_the_pixel_budget_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import admin.domain.samples as samples

    intake = make_intake(tmp_path, max_image_pixels=50_000_000, max_batch_pixels=40_000_000)
    big = solid((0, 0, 0), "PNG", (4000, 4000))  # 16 Mpx, a few KB: compresses away
    decoded = []
    monkeypatch.setattr(samples, "fingerprint_decoded", lambda *a: decoded.append(1) or pytest.fail("decoded"))
    with pytest.raises(TooManyPixelsError, match="48000000 pixels") as refused:
        intake.accept([Upload(f"{i}.png", big + bytes([i])) for i in range(3)], ["ants"], True)
    assert refused.value.status_code == 413 and not decoded and intake.store.count() == 0


def test_on_fashion_mnist_copies_are_pinned_and_other_garments_are_not(tmp_path: Path) -> None:
    """Real small grayscale pictures (Debian's dataset-fashion-mnist, which make setup installs): copies of
    holdout pictures are pinned, while distinct garments of the same classes mostly go by the hash split."""
    import io

    from PIL import Image

    from training.fashion_mnist import FASHION_MNIST_DIR, read_idx

    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip(f"{FASHION_MNIST_DIR} is absent: apt-get install dataset-fashion-mnist (make setup does)")
    pixels = read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz")[:260]

    def png(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return buf.getvalue()

    held = []
    for k, x in enumerate(pixels[:20]):
        path = tmp_path / "base" / f"{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png(Image.fromarray(x, mode="L")))
        held.append(path)
    intake = make_intake(tmp_path, holdout_fraction=0.0001, base_files=lambda: {"holdout": held})
    pinned = 0
    for k, x in enumerate(pixels[:20]):
        img = Image.fromarray(x, mode="L")
        copy = img.crop((2, 2, 28, 28)) if k % 2 else Image.eval(img, lambda v: min(255, int(v * 1.1)))
        got = intake.accept([Upload(f"c{k}.png", png(copy))], ["ants"], True)[0]
        pinned += got.split_reason == f"near-duplicate of base:{k}.png"
    assert pinned == 20, "every 2-pixel crop and brighter copy of a holdout garment is pinned"
    others = intake.accept([Upload(f"o{k}.png", png(Image.fromarray(x, mode="L"))) for k, x in enumerate(pixels[20:])],
                           ["ants"], True)  # fmt: skip
    wrongly = sum(o.split == "holdout" for o in others)
    assert wrongly <= 12, f"{wrongly} of 240 different garments pinned (0 of 240 when written)"


def test_a_copy_of_a_training_picture_stays_in_training(tmp_path: Path) -> None:
    """The holdout never holds a picture the models trained on: a re-encoded copy of a stored training picture
    goes to training even when its own pixels' hash says holdout; a different picture follows its hash."""
    from tests.support.images import encode

    intake = make_intake(tmp_path, holdout_fraction=0.5)
    def side(data: bytes) -> str:
        return split_for(fingerprint(data).pixels_sha, 0.5)

    pairs = ((seed, q) for seed in range(40) for q in (95, 90, 85, 80, 75, 70))
    seed, quality = next((s, q) for s, q in pairs if side(photo(s)) == "train"
                         and side(photo(s, fmt="JPEG", quality=q)) == "holdout")  # fmt: skip
    original = intake.accept([Upload("original.png", photo(seed))], ["ants"], True)[0]
    assert (original.split, original.split_reason) == ("train", "hash split")
    copy = intake.accept([Upload("copy.jpg", photo(seed, fmt="JPEG", quality=quality))], ["ants"], True)[0]
    assert (copy.split, copy.split_reason) == ("train", f"near-duplicate of {original.id}")
    assert intake.store.get(copy.id).split_reason == f"near-duplicate of {original.id}"  # type: ignore[union-attr]
    other = next(photo(s) for s in range(100, 200) if side(photo(s)) == "holdout")
    assert intake.accept([Upload("other.png", other)], ["ants"], True)[0].split == "holdout"
    again = make_intake(tmp_path, holdout_fraction=0.5)  # a new process reads the stored training pictures
    resized = (encode(_decode(photo(seed)).resize((r, r)), "PNG") for r in range(70, 95))
    copy2 = next(c for c in resized if side(c) == "holdout")
    got = again.accept([Upload("copy2.png", copy2)], ["ants"], True)[0]
    assert (got.split, got.split_reason) == ("train", f"near-duplicate of {original.id}")


def test_a_copy_of_a_base_training_picture_stays_in_training(tmp_path: Path) -> None:
    """The base data's training pictures are indexed too: a re-encoded copy of one stays in training whatever its
    hash says (here every hash says holdout), so the holdout never grades a model on a picture it trained on."""
    from PIL import Image

    from tests.support.images import encode

    base = Image.effect_noise((64, 64), 40).convert("RGB")
    trained = tmp_path / "trained.png"
    trained.write_bytes(encode(base, "PNG"))
    intake = make_intake(tmp_path, holdout_fraction=0.9999, base_files=lambda: {"train": [trained]})
    copy = intake.accept([Upload("copy.jpg", encode(base, "JPEG", quality=70))], ["ants"], True)[0]
    assert (copy.split, copy.split_reason) == ("train", "near-duplicate of base:trained.png")
    other = encode(Image.effect_noise((64, 64), 40).convert("RGB"), "PNG")
    assert intake.accept([Upload("other.png", other)], ["ants"], True)[0].split == "holdout"
