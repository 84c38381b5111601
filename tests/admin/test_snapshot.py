"""Dataset snapshots: base data plus samples, a reposted base holdout image stays holdout."""

from __future__ import annotations

from pathlib import Path

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
