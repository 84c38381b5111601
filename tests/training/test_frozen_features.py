"""Judging with the frozen stages' output kept per image (training/frozen_features.py): the same answers as the
whole model, the frozen stages run once per image for every model that shares them, and only new images cost
them again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from graft.core.artifact import WEIGHTS_FILE, read_card, save_weights, write_card
from graft.core.util import file_key
from tests.support.artifacts import images, reference_probs, shared_missing_reason, train_tiny_run
from training import feature_store, frozen_features
from training.evaluate import predict_probabilities

pytestmark = pytest.mark.skipif(shared_missing_reason() is not None, reason=str(shared_missing_reason()))
HEAD_RECIPE = [f"features.{i}" for i in range(19)]  # every mobilenet_v2 stage but the head


def _head_only(run: Path) -> Path:
    """Record the frozen stages as `graft train` does (recipe.frozen_stages)."""
    card = read_card(run)
    write_card(run, card.model_copy(update={"recipe": {**card.recipe, "frozen_stages": HEAD_RECIPE}}))
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    a = _head_only(train_tiny_run(root / "a", per_class=6, steps=40, seed=1))
    b = _head_only(train_tiny_run(root / "b", per_class=8, steps=60, seed=2))  # another head, the same backbone
    c = root / "c"
    shutil.copytree(a, c)
    from safetensors.torch import load_file

    weights = load_file(str(c / WEIGHTS_FILE))
    weights["features.0.0.weight"] = weights["features.0.0.weight"] * 1.01  # another frozen stage
    save_weights(c, weights)
    return {"a": a, "b": b, "c": c}


@pytest.fixture
def computed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many images each evaluation ran through the frozen stages."""
    seen: list[int] = []
    real = frozen_features._prefix_features

    def counting(split, card, paths, device, batch_size):  # type: ignore[no-untyped-def]
        seen.append(len(paths))
        return real(split, card, paths, device, batch_size)

    monkeypatch.setattr(frozen_features, "_prefix_features", counting)
    return seen


def test_the_recorded_stages_are_the_model_s(runs: dict[str, Path]) -> None:
    from graft.core.artifact import load_model

    model, card = load_model(runs["a"])
    plan = frozen_features.plan_of(model, card)
    assert plan is not None and plan.head_only and list(plan.frozen) == HEAD_RECIPE


def test_cached_features_give_the_whole_model_s_answers(runs: dict[str, Path], tmp_path: Path,
                                                         computed: list[int]) -> None:  # fmt: skip
    paths = [p for p, _ in images("val", 5)]
    want = reference_probs(runs["a"], paths)
    for _ in range(2):  # computing the features, then reading them back
        got, labels = predict_probabilities(runs["a"], paths, feature_cache=tmp_path / "cache")
        assert labels == ["ants", "bees"]
        torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), want, rtol=0, atol=1e-5)
    assert computed == [10, 0]


def test_models_that_share_the_frozen_stages_share_the_features(runs: dict[str, Path], tmp_path: Path,
                                                                computed: list[int]) -> None:  # fmt: skip
    paths = [p for p, _ in images("val", 4)]
    cache = tmp_path / "cache"
    predict_probabilities(runs["a"], paths, feature_cache=cache)
    got_b, _ = predict_probabilities(runs["b"], paths, feature_cache=cache)  # another head: its own answers
    torch.testing.assert_close(torch.tensor(got_b, dtype=torch.float64), reference_probs(runs["b"], paths),
                               rtol=0, atol=1e-5)  # fmt: skip
    predict_probabilities(runs["c"], paths, feature_cache=cache)  # other frozen weights: other features
    more = paths + [p for p, _ in images("val", 1, offset=10)]
    predict_probabilities(runs["b"], more, feature_cache=cache)  # two new images: only they run the frozen stages
    assert computed == [8, 0, 8, 2]
    assert len(list(cache.iterdir())) == 2


def test_unreadable_images_and_a_lost_index_only_cost_time(runs: dict[str, Path], tmp_path: Path,
                                                            computed: list[int]) -> None:  # fmt: skip
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    paths = [p for p, _ in images("val", 2)] + [bad]
    cache = tmp_path / "cache"
    first, _ = predict_probabilities(runs["a"], paths, feature_cache=cache)
    assert first[-1] == [] and all(len(row) == 2 for row in first[:-1])
    for index in cache.glob("*/index.json"):
        index.write_text("{not json")
    again, _ = predict_probabilities(runs["a"], paths, feature_cache=cache)
    assert again == first and computed == [5, 5]


def test_a_run_without_recorded_frozen_stages_runs_whole(runs: dict[str, Path], tmp_path: Path) -> None:
    from graft.core.artifact import load_model

    plain = tmp_path / "plain"
    shutil.copytree(runs["a"], plain)
    card = read_card(plain)
    recipe = {k: v for k, v in card.recipe.items() if k != "frozen_stages"}
    write_card(plain, card.model_copy(update={"recipe": recipe}))
    model, card = load_model(plain)
    assert frozen_features.predict_with_cache(model, card, [], "cpu", 8, tmp_path / "cache") is None
    paths = [p for p, _ in images("val", 1)]
    got, _ = predict_probabilities(plain, paths, feature_cache=tmp_path / "cache")
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), reference_probs(plain, paths), rtol=0, atol=1e-5)
    assert not (tmp_path / "cache").exists()


def test_a_job_s_run_keeps_them_in_the_state_folder(tmp_path: Path) -> None:
    from admin.domain.judge import frozen_features_root

    assert frozen_features_root(tmp_path / "state" / "jobs" / "j1" / "run") == (tmp_path / "state" / "frozen-features")
    assert frozen_features_root(tmp_path / "runs" / "v1") is None
    # the refit's own model beside an averaged candidate shares them (the same frozen layers)
    own = tmp_path / "state" / "jobs" / "j1" / "run" / "unaveraged"
    assert frozen_features_root(own) == (tmp_path / "state" / "frozen-features")
    assert frozen_features_root(tmp_path / "runs" / "v1" / "unaveraged") is None


def test_a_deeper_recipe_caches_the_cut_inside_the_backbone(runs: dict[str, Path], tmp_path: Path,
                                                             computed: list[int]) -> None:  # fmt: skip
    """Three stages and the head trained: the cut is features.15's output (160x7x7 floats, 31 KB an image)."""
    deep = tmp_path / "deep"
    shutil.copytree(runs["b"], deep)
    card = read_card(deep)
    write_card(deep, card.model_copy(update={"recipe": {**card.recipe, "frozen_stages": HEAD_RECIPE[:16]}}))
    paths = [p for p, _ in images("val", 3)]
    for _ in range(2):
        got, _ = predict_probabilities(deep, paths, feature_cache=tmp_path / "cache")
        torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), reference_probs(deep, paths),
                                   rtol=0, atol=1e-5)  # fmt: skip
    assert computed == [6, 0]
    (chunk,) = (tmp_path / "cache").glob("*/chunk-*.npy")
    assert chunk.stat().st_size > 6 * 160 * 7 * 7 * 4


def test_adding_keeps_what_the_store_knew_when_the_index_on_disk_lost_it(tmp_path: Path) -> None:
    """Two evaluations may write the index in turn: an index rewritten without this store's keys does not make
    its known features vanish (they would otherwise read as unreadable images)."""
    import numpy as np

    store = feature_store.FeatureStore(tmp_path)
    store.add(["a", "b"], np.ones((2, 3), np.float32))
    (tmp_path / feature_store.INDEX).write_text("{}")  # another writer's index, without a and b
    store.add(["c"], np.zeros((1, 3), np.float32))
    again = feature_store.FeatureStore(tmp_path)
    assert all(k in again for k in ("a", "b", "c"))
    assert again.get("a").tolist() == [1.0, 1.0, 1.0] and again.get("c").tolist() == [0.0, 0.0, 0.0]


def test_an_erased_picture_s_features_leave_the_disk(runs: dict[str, Path], tmp_path: Path,
                                                     computed: list[int]) -> None:  # fmt: skip
    """An image deleted (an erased sample) or replaced since its features were kept: the next evaluation drops its
    row, and the chunk that held it is written again without it; the other images are still read back."""
    import numpy as np

    photos = tmp_path / "photos"
    photos.mkdir()
    paths = []
    for src, _ in images("val", 3):
        paths.append(photos / src.name)
        shutil.copyfile(src, paths[-1])
    cache = tmp_path / "cache"
    predict_probabilities(runs["a"], paths, feature_cache=cache)
    (store,) = cache.iterdir()
    erased = feature_store.FeatureStore(store).get(str(file_key(paths[0])))
    paths[0].unlink()
    got, _ = predict_probabilities(runs["a"], paths[1:], feature_cache=cache)
    assert computed == [6, 0]  # the others came from the store
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), reference_probs(runs["a"], paths[1:]),
                               rtol=0, atol=1e-5)  # fmt: skip
    kept = feature_store.FeatureStore(store)
    assert len(kept.index) == 5 and all(str(file_key(p)) in kept for p in paths[1:])
    rows = np.concatenate([np.load(c) for c in store.glob("chunk-*.npy")])
    assert len(rows) == 5 and not any(np.array_equal(r, erased) for r in rows)


def test_only_the_most_recently_used_stores_are_kept(tmp_path: Path) -> None:
    import os

    for age, name in enumerate(["newest", "middle", "oldest", "older-still"]):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1_000_000 - age, 1_000_000 - age))
    gone = feature_store.retire_old_stores(tmp_path, tmp_path / "oldest")  # just used: the most recent now
    assert sorted(p.name for p in tmp_path.iterdir()) == ["newest", "oldest"]
    assert sorted(p.name for p in gone) == ["middle", "older-still"]


def test_pruning_rewrites_every_chunk_that_held_a_gone_image(tmp_path: Path) -> None:
    """Three chunks (three evaluations); an image gone from the first and one replaced in the second: those two
    chunks are written again with their live rows, the third is untouched, and every live row reads back."""
    import numpy as np

    files = [tmp_path / f"{i}.png" for i in range(6)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 10)
    store = feature_store.FeatureStore(tmp_path / "store")
    for lo in (0, 2, 4):
        store.add([str(file_key(f)) for f in files[lo : lo + 2]], np.arange(lo, lo + 2, dtype=np.float32)[:, None])
    third = store.index[str(file_key(files[4]))][0]
    live = {str(file_key(f)): float(i) for i, f in enumerate(files) if i not in (0, 3)}
    files[0].unlink()
    files[3].write_bytes(b"another picture")
    assert feature_store.FeatureStore(store.folder).prune() == 2
    again = feature_store.FeatureStore(store.folder)
    assert {k: float(again.get(k)[0]) for k in again.index} == live
    chunks = sorted(p.name for p in store.folder.glob("chunk-*.npy"))
    assert len(chunks) == 3 and third in chunks
    assert sorted(len(np.load(store.folder / c)) for c in chunks) == [1, 1, 2]


def test_pruning_the_files_just_deleted_drops_their_rows_alone(tmp_path: Path) -> None:
    """When the admin knows which files it deleted, only their rows go: the other kept files are not looked at (a
    file changed meanwhile keeps its stale row until the next evaluation's full pruning drops it)."""
    import numpy as np

    files = [tmp_path / f"{i}.png" for i in range(3)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 10)
    store = feature_store.FeatureStore(tmp_path / "store")
    store.add([str(file_key(f)) for f in files], np.arange(3, dtype=np.float32)[:, None])
    stale = str(file_key(files[2]))
    files[0].unlink()
    files[2].write_bytes(b"another picture")
    assert feature_store.prune_stores(tmp_path, [files[0].resolve()]) == 1
    kept = feature_store.FeatureStore(store.folder)
    assert sorted(kept.index) == sorted([str(file_key(files[1])), stale])
    assert [float(kept.get(k)[0]) for k in sorted(kept.index)] == [1.0, 2.0]
    assert feature_store.FeatureStore(store.folder).prune() == 1  # the full pruning: the changed file's row
    assert list(feature_store.FeatureStore(store.folder).index) == [str(file_key(files[1]))]
