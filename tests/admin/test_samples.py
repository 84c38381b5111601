"""Sample intake and the sample store: labels, images, the split, content addressing, duplicates, batches."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from admin.domain.samples import SampleIntake, Upload, split_for, validate_label
from admin.store.db import Database
from admin.store.samples import SampleStore
from graft.core.errors import (
    ConflictError,
    EmptyBodyError,
    InvalidSampleError,
    NotAnImageError,
    TooManyPixelsError,
    TruncatedImageError,
)
from graft.core.images import inspect
from graft.core.util import write_atomic
from tests.support.images import solid


@pytest.mark.parametrize("label", ["ants", "bees", "Grey heron", "classe-2", "été", "a" * 64])
def test_good_labels_pass(label: str) -> None:
    assert validate_label(label) == label


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
        ("a" * 65, "characters long"),
    ],
)
def test_bad_labels_are_refused_with_the_reason(label: str | None, why: str) -> None:
    with pytest.raises(InvalidSampleError, match=why):
        validate_label(label)


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


@pytest.fixture
def intake(tmp_path: Path) -> SampleIntake:
    return SampleIntake(SampleStore(Database(tmp_path / "db.sqlite3"), tmp_path), 0.3, max_image_pixels=10_000)


def test_store_is_content_addressed_and_recognises_duplicates(intake: SampleIntake) -> None:
    data = solid()
    first = intake.accept([Upload("x.jpg", data)], ["ants"])[0]
    again = intake.accept([Upload("x.jpg", data)], ["ants"])[0]
    assert not first.duplicate and again.duplicate and again.id == first.id
    assert first.split == split_for(first.id, 0.3)
    files = list((intake.store.root / "samples").rglob("*.jpg"))
    assert [f.stem for f in files] == [first.id]
    counts = intake.store.counts()
    assert counts == {"ants": {"train": int(first.split == "train"), "holdout": int(first.split == "holdout")}}
    with pytest.raises(ConflictError, match="already stored"):
        intake.accept([Upload("x.jpg", data)], ["bees"])


def test_store_survives_concurrent_uploads_of_the_same_bytes(intake: SampleIntake) -> None:
    data = solid((1, 2, 3), "PNG")
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(intake.accept([Upload("x", data)], ["ants"])[0]))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(not r.duplicate for r in results) == 1 and len(results) == 8
    assert intake.store.count() == 1


def test_a_batch_is_stored_whole_or_not_at_all(intake: SampleIntake) -> None:
    stored = intake.accept([Upload("a", solid((5, 5, 5)))], ["ants"])[0]
    batch = [Upload("b", solid((6, 6, 6))), Upload("c", solid((5, 5, 5)))]  # c is stored as "ants" already
    with pytest.raises(ConflictError, match="nothing from this batch was stored"):
        intake.accept(batch, ["bees"])
    with pytest.raises(ConflictError, match="twice in this request"):
        intake.accept([Upload("d", solid((7, 7, 7))), Upload("e", solid((7, 7, 7)))], ["ants", "bees"])
    assert intake.store.count() == 1 and intake.store.get(stored.id) is not None
