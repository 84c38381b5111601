"""The fair holdout: a model's training and validation images never grade it (unit, then through a real job)."""

from __future__ import annotations

from pathlib import Path

import httpx

from admin.domain.fairness import fair_holdout, seen_by
from graft.core.manifest import Item, write_manifest
from tests.admin.test_jobs import Env, post, retrain
from tests.support.auth import ADMIN
from tests.support.fakes import write_toy_card
from tests.support.images import image_folder, png, write
from tests.support.waiting import wait_ready


def _files(root: Path) -> set[Path]:
    return {p.resolve() for p in root.rglob("*.png")}


def test_a_model_saw_its_train_and_val_images_and_its_parents(tmp_path: Path) -> None:
    base = image_folder(tmp_path / "base", {"train": 3, "val": 4})
    first = write_toy_card(tmp_path / "first", ["ants", "bees"], 0.7, dataset_path=base)
    s1 = seen_by(tmp_path / "first")
    assert s1.known and s1.paths == _files(base) and len(s1.paths) == 14, "train and val: val chose its best epoch"
    assert first.lineage.dataset_path == str(base)

    sample_holdout = write(tmp_path / "samples" / "h.png", png(1))
    sample_train = write(tmp_path / "samples" / "t.png", png(2))
    items = [Item(p, "ants", "train") for p in sorted((base / "train" / "ants").glob("*.png"))]
    items += [Item(sample_train, "bees", "train"), Item(sample_holdout, "bees", "holdout")]
    items += [Item(p, "ants", "holdout") for p in sorted((base / "val" / "ants").glob("*.png"))]
    manifest = tmp_path / "job" / "manifest.json"
    write_manifest(items, manifest)
    write_toy_card(tmp_path / "cold", ["ants", "bees"], 0.8, dataset_path=manifest)
    cold = seen_by(tmp_path / "cold")
    assert sample_holdout.resolve() not in cold.paths and sample_train.resolve() in cold.paths and len(cold.paths) == 4

    # a warm start inherits what its parent saw (the parent's validation images included)
    write_toy_card(tmp_path / "warm", ["ants", "bees"], 0.8, dataset_path=manifest, parent=tmp_path / "first")
    warm = seen_by(tmp_path / "warm")
    assert warm.paths == cold.paths | s1.paths

    holdout = [i for i in items if i.split == "holdout"]
    fair = fair_holdout(holdout, [("candidate", cold), ("champion", s1)])
    assert [i.path for i in fair.items] == [sample_holdout] and fair.left_out == 4 and fair.unknown == []
    write_toy_card(tmp_path / "nodata", ["a", "b"], 0.5)
    unknown = seen_by(tmp_path / "nodata")
    assert not unknown.known and fair_holdout(holdout, [("champion", unknown)]).unknown == ["champion"]


def test_the_first_models_validation_images_do_not_grade_it(tmp_path: Path, free_port: int) -> None:
    env = Env(tmp_path, free_port)
    # the first model's card records its data, as graft train writes it: base/train and base/val (12 images)
    write_toy_card(env.initial, ["ants", "bees"], 0.6, dataset_path=env.base)
    with env.server() as server, httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as api:
        wait_ready(api)
        stored = [post(api, 7000 + i, "ants" if i % 2 else "bees") for i in range(40)]
        sample_holdout = sum(s["split"] == "holdout" for s in stored)
        assert sample_holdout >= 4, "enough holdout samples for gate_min_holdout=4 (seeded)"
        job = retrain(api, env, 0.95, epochs=1)
        gate = job["gate"]
        assert gate["left_out"] == 12, "the 12 base validation images graded nothing: the champion chose on them"
        assert gate["comparison"]["n"] == sample_holdout == job["metrics"]["candidate"]["n"]
        assert "12 more left out: a model trained or selected on them" in job["reason"], job["reason"]
        assert job["status"] == "succeeded", job["reason"]
        # version 2 never saw the base validation images: they grade the next candidate against it
        job = retrain(api, env, 0.95, epochs=1)
        assert job["gate"]["left_out"] == 0 and job["gate"]["comparison"]["n"] == sample_holdout + 12
        assert "no labelled samples arrived since version 2" in job["reason"]
        # a correction is new data: after a relabel, the next job says nothing of the kind
        train = next(s for s in stored if s["split"] == "train")
        fixed = api.patch(f"/v1/samples/{train['id']}", json={"label": "bees" if train["label"] == "ants" else "ants"})
        assert fixed.status_code == 200, fixed.text
        job = retrain(api, env, 0.95, epochs=1)
        assert "no labelled samples arrived" not in (job["reason"] or ""), job["reason"]
