"""Datasets: layouts, deterministic stratified splits, unreadable files, manifests."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from graft.core.errors import DatasetError
from graft.core.manifest import Item, write_manifest
from training.data import class_weights, load_image_folder, load_manifest, load_rgb


def _img(path: Path, color: tuple[int, int, int] = (200, 10, 10), mode: str = "RGB", fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (40, 30), color if mode == "RGB" else None).save(path, fmt)
    return path


def _flat_dataset(root: Path, per_class: dict[str, int]) -> Path:
    for label, n in per_class.items():
        for i in range(n):
            _img(root / label / f"{i}.jpg", (i * 7 % 255, 100, 50))
    return root


def test_flat_layout_split_is_stratified_and_repeatable(tmp_path: Path) -> None:
    root = _flat_dataset(tmp_path / "d", {"cat": 10, "dog": 20})
    a = load_image_folder(root, val_fraction=0.2, seed=1)
    b = load_image_folder(root, val_fraction=0.2, seed=1)
    c = load_image_folder(root, val_fraction=0.2, seed=2)
    assert a.labels == ["cat", "dog"]
    assert sorted(s.label for s in a.val) == ["cat"] * 2 + ["dog"] * 4
    assert [s.path for s in a.val] == [s.path for s in b.val]
    assert a.digest == b.digest
    assert {s.path for s in a.val} != {s.path for s in c.val}
    assert not {s.path for s in a.val} & {s.path for s in a.train}


def test_a_grown_folder_keeps_the_split_of_its_old_images(tmp_path: Path) -> None:
    # Retraining on a superset must train on what the champion trained on: a shuffle of the whole class
    # redrew the split on every growth and moved about a fifth of the old training images to validation.
    small = load_image_folder(_flat_dataset(tmp_path / "d", {"cat": 40, "dog": 40}), val_fraction=0.2, seed=0)
    grown = load_image_folder(_flat_dataset(tmp_path / "d", {"cat": 60, "dog": 60}), val_fraction=0.2, seed=0)
    assert sorted(s.label for s in grown.val) == ["cat"] * 12 + ["dog"] * 12
    old_train = {s.path for s in small.train}
    moved = old_train - {s.path for s in grown.train}
    assert len(moved) <= 4, f"{len(moved)} of {len(old_train)} old training images moved to validation"
    assert len({s.path for s in small.val} - {s.path for s in grown.val}) <= 2


def test_the_cap_per_class_keeps_its_images_as_the_folder_grows(tmp_path: Path) -> None:
    small = load_image_folder(_flat_dataset(tmp_path / "d", {"a": 30, "b": 30}), seed=4, max_per_class=10)
    grown = load_image_folder(_flat_dataset(tmp_path / "d", {"a": 32, "b": 32}), seed=4, max_per_class=10)
    before, after = {s.path for s in small.train}, {s.path for s in grown.train}
    assert len(before) == len(after) == 20 and len(before - after) <= 4


def test_train_val_layout_is_used_as_is(hymenoptera: Path) -> None:
    d = load_image_folder(hymenoptera)
    assert d.labels == ["ants", "bees"]
    assert len(d.val) == 153
    # 245 training files, one of them a GIF placeholder that is a valid image
    assert len(d.train) == 245 and d.skipped == []


def test_unreadable_and_non_image_files_are_skipped_with_their_paths(tmp_path: Path) -> None:
    root = _flat_dataset(tmp_path / "d", {"a": 4, "b": 4})
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "b" / "fake.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "b" / "empty.png").write_bytes(b"")
    d = load_image_folder(root)
    assert sorted(s.path.name for s in d.skipped) == ["empty.png", "fake.jpg", "notes.txt"]
    assert all(s.reason for s in d.skipped)
    assert len(d.train) + len(d.val) == 8


def test_modes_are_converted_to_rgb(tmp_path: Path) -> None:
    gray = tmp_path / "g.png"
    Image.new("L", (8, 8), 128).save(gray)
    rgba = tmp_path / "a.png"
    Image.new("RGBA", (8, 8), (1, 2, 3, 4)).save(rgba)
    cmyk = tmp_path / "c.jpg"
    Image.new("CMYK", (8, 8), (0, 50, 100, 0)).save(cmyk)
    gif = tmp_path / "p.gif"
    Image.new("P", (8, 8), 3).save(gif)
    for p in (gray, rgba, cmyk, gif):
        assert load_rgb(p).mode == "RGB"


def test_single_class_is_refused(tmp_path: Path) -> None:
    root = _flat_dataset(tmp_path / "d", {"only": 5})
    with pytest.raises(DatasetError, match="need at least 2"):
        load_image_folder(root)


def test_manifest_round_trip_and_digest(tmp_path: Path) -> None:
    root = _flat_dataset(tmp_path / "d", {"x": 3, "y": 3})
    items = [Item(p, p.parent.name, "val" if p.stem == "0" else "train") for p in sorted(root.rglob("*.jpg"))]
    digest = write_manifest(items, tmp_path / "m.json")
    d = load_manifest(tmp_path / "m.json")
    assert d.digest == digest
    assert len(d.val) == 2 and len(d.train) == 4
    # the digest depends on content, not on where the files are
    moved = tmp_path / "moved"
    root.rename(moved)
    items2 = [Item(moved / i.path.relative_to(root), i.label, i.split) for i in items]
    assert write_manifest(items2, tmp_path / "m2.json") == digest


def test_manifest_holdout_never_reaches_training(tmp_path: Path) -> None:
    root = _flat_dataset(tmp_path / "d", {"x": 10, "y": 10})
    files = sorted(root.rglob("*.jpg"))
    items = [Item(p, p.parent.name, "holdout" if int(p.stem) < 3 else "train") for p in files]
    write_manifest(items, tmp_path / "m.json")
    d = load_manifest(tmp_path / "m.json", val_fraction=0.25, seed=3)
    holdout = {i.path for i in items if i.split == "holdout"}
    used = {s.path for s in d.train + d.val}
    assert not used & holdout and len(used) == 14
    # no val items in the manifest: a stratified quarter of the train items validates
    assert sorted(s.label for s in d.val) == ["x", "x", "y", "y"]


def test_class_weights_balance_inverse_frequency() -> None:
    w = class_weights([0, 0, 0, 1], 2)
    assert w[1] / w[0] == pytest.approx(3.0)
    assert float((w * __import__("torch").tensor([3.0, 1.0])).sum()) == pytest.approx(4.0)


def test_truncated_jpeg_is_skipped_at_load_time(tmp_path: Path) -> None:
    from graft.core.preprocessing import Preprocessing
    from graft.core.transforms import eval_transform
    from training.data import ImageDataset, collate

    good = _img(tmp_path / "good.jpg")
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), (9, 9, 9)).save(buf, "JPEG")
    bad = tmp_path / "trunc.jpg"
    bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    ds = ImageDataset([(good, 0), (bad, 1)], eval_transform(Preprocessing(resize=32, crop=32)))
    x, y = collate([ds[0], ds[1]])
    assert x.shape == (1, 3, 32, 32) and y.tolist() == [0]
