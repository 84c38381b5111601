"""Dataset snapshots: base data plus samples, a reposted base holdout image stays holdout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from admin.domain.labels import LabelSet
from admin.domain.samples import SampleIntake, Upload
from admin.domain.snapshot import base_items, take_snapshot
from admin.store.db import Database
from admin.store.labels import LabelStore
from admin.store.samples import SampleStore
from tests.support.images import solid, write


def test_snapshot_keeps_base_split_for_reposted_base_images(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite3")
    intake = SampleIntake(SampleStore(db, tmp_path), LabelSet(LabelStore(db)), 0.3, 10_000, 1_000_000)
    base = tmp_path / "base"
    for split in ("train", "val"):
        for label, color in (("ants", (250, 0, 0)), ("bees", (0, 0, 250))):
            shade = 0 if split == "train" else 100
            write(base / split / label / "x.png", solid((color[0], shade, color[2]), "PNG"))
    items = base_items(base, None, 0.2)
    assert sorted((i.label, i.split) for i in items) == [
        ("ants", "holdout"),
        ("ants", "train"),
        ("bees", "holdout"),
        ("bees", "train"),
    ]
    # Post a base holdout image again as a sample: whatever its hash split says, it stays holdout.
    val_ants = (base / "val" / "ants" / "x.png").read_bytes()
    intake.accept([Upload("a", val_ants)], ["ants"], True)
    intake.accept([Upload("b", solid((9, 9, 9)))], ["bees"], True)
    snap = take_snapshot(intake.store, items)
    assert len(snap.items) == 5 and snap.num_samples == 2
    assert sum(1 for i in snap.items if i.split == "holdout" and i.label == "ants") == 1
    assert snap.labels == ["ants", "bees"]


def test_snapshot_digest_reads_no_file_twice_and_follows_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import graft.core.manifest as manifest
    import graft.core.util as util
    from admin.domain import snapshot as snapshot_mod

    db = Database(tmp_path / "db.sqlite3")
    intake = SampleIntake(SampleStore(db, tmp_path), LabelSet(LabelStore(db)), 0.3, 10_000, 1_000_000)
    base = tmp_path / "base"
    for label, color in (("ants", (250, 0, 0)), ("bees", (0, 0, 250))):
        for k in range(3):
            write(base / "train" / label / f"{k}.png", solid((color[0], 10 * k, color[2]), "PNG"))
        write(base / "val" / label / "v.png", solid((color[0], 99, color[2]), "PNG"))
    for k in range(4):
        intake.accept([Upload(f"s{k}", solid((7 * k, 50, 50)))], ["ants" if k % 2 else "bees"], True)
    hashes = snapshot_mod.FileHashes()

    def digest(name: str) -> str:
        items = base_items(base, None, 0.2)
        snap = snapshot_mod.write_snapshot(snapshot_mod.take_snapshot(intake.store, items, hashes), tmp_path / name)
        assert snap.digest == manifest.dataset_digest(snap.items, real), "the same digest as hashing every file"
        return snap.digest

    real = util.file_sha256
    reads: list[Path] = []
    first = digest("m1.json")
    for module in (snapshot_mod, manifest):
        monkeypatch.setattr(module, "file_sha256", lambda p: reads.append(Path(p)) or real(p))
    assert digest("m2.json") == first
    assert reads == [], "the second snapshot reads no file: samples by their id, base files from the cache"
    reads.clear()
    changed = base / "train" / "ants" / "0.png"
    changed.write_bytes(solid((1, 2, 3), "PNG"))
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 1_000_000))
    second = digest("m3.json")
    assert second != first, "a base file changed in place changes the digest"
    assert reads == [changed], "only the changed file is read again"
    intake.accept([Upload("new", solid((3, 3, 3)))], ["bees"], True)
    assert digest("m4.json") != second, "a new sample changes the digest"
