"""How a distributed run shares out its batches and its cache, without starting processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, WeightedRandomSampler

from training.config import TrainConfig
from training.distributed import (
    RankBatchSampler,
    WorldSizeError,
    check_fits,
    loader_order,
    plan_for,
    rank_config,
    rank_slices,
    shard,
)
from training.runtime import Runtime


class _Indices(Dataset[int]):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _cfg(**kw: object) -> TrainConfig:
    return TrainConfig(data=Path("d"), output=Path("o"), **kw)  # type: ignore[arg-type]


def _rt(world: int, rank: int = 0) -> Runtime:
    return Runtime(torch.device("cpu"), rank, world)


@pytest.mark.parametrize(("n", "batch", "world"), [(16, 4, 2), (17, 4, 2), (13, 6, 3), (9, 8, 4), (5, 4, 2)])
def test_rank_slices_rebuild_the_one_process_batches(n: int, batch: int, world: int) -> None:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    single = rank_slices(order, batch)
    per_rank = [rank_slices(order, batch, r, world) for r in range(world)]
    assert all(len(p) == len(single) for p in per_rank)  # every rank takes the same number of steps
    for step, whole in enumerate(single):
        parts = [p[step] for p in per_rank]
        assert all(len(part) > 0 for part in parts)  # no rank has an empty step (DDP would hang)
        joined = torch.cat(parts)
        if len(whole) >= world:
            assert torch.equal(joined, whole)
        else:  # a short last batch is topped up from the start of the order
            assert torch.equal(joined[: len(whole)], whole) and len(joined) == world


@pytest.mark.parametrize("weighted", [False, True])
def test_rank_batches_are_slices_of_the_one_process_loader(weighted: bool) -> None:
    ds = _Indices(11)

    def sampler(g: torch.Generator) -> torch.utils.data.Sampler[int]:
        if weighted:
            return WeightedRandomSampler([1.0 + i % 3 for i in range(11)], 11, generator=g)
        return RandomSampler(ds, generator=g)

    def one_process() -> list[list[int]]:
        g = torch.Generator().manual_seed(5)
        return [b.tolist() for b in DataLoader(ds, batch_size=4, sampler=sampler(g), generator=g)]

    ranks = []
    for r in range(2):
        g = torch.Generator().manual_seed(5)
        loader = DataLoader(ds, batch_sampler=RankBatchSampler(sampler(g), 4, r, 2), generator=g)
        ranks.append([b.tolist() for b in loader])
    assert [a + b for a, b in zip(*ranks, strict=True)] == one_process()
    # and the cache pass reproduces the one-process order without loading anything
    g = torch.Generator().manual_seed(5)
    again = DataLoader(ds, batch_sampler=RankBatchSampler(sampler(g), 4, 1, 2), generator=g)
    assert loader_order(again) == [i for b in one_process() for i in b]


def test_loader_order_of_a_plain_shuffled_loader() -> None:
    ds = _Indices(9)
    loader = DataLoader(ds, batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(3))
    expected = [i for b in DataLoader(ds, batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(3))
                for i in b.tolist()]  # fmt: skip
    assert loader_order(loader) == expected


def test_shards_cover_every_item_once() -> None:
    for n, world in [(10, 3), (2, 2), (7, 4)]:
        got = [i for r in range(world) for i in shard(n, r, world)]
        assert got == list(range(n))


def test_split_keeps_the_recipe_and_per_process_scales_the_learning_rate() -> None:
    split = plan_for(_cfg(batch_size=32, lr=1e-3), _rt(4))
    assert (split.per_rank_batch, split.effective_batch, split.lr_factor) == (8, 32, 1.0)
    assert rank_config(_cfg(batch_size=32, lr=1e-3), split).batch_size == 8
    cfg = _cfg(batch_size=32, lr=1e-3, distributed_batch="per-process")
    per = plan_for(cfg, _rt(4))
    assert (per.per_rank_batch, per.effective_batch, per.lr_scaling) == (32, 128, "linear")
    assert rank_config(cfg, per).lr == pytest.approx(4e-3)
    assert per.record()["world_size"] == 4
    one = plan_for(cfg, _rt(1))
    assert rank_config(cfg, one) is cfg and one.lr_factor == 1.0


def test_world_size_errors_say_what_to_change() -> None:
    with pytest.raises(WorldSizeError, match="multiple of 3"):
        plan_for(_cfg(batch_size=32), _rt(3))
    plan = plan_for(_cfg(batch_size=16), _rt(2))
    with pytest.raises(WorldSizeError, match="8 training images cannot fill one step of 2 processes x 8"):
        check_fits(plan, 8, 10)
    with pytest.raises(WorldSizeError, match="validation images"):
        check_fits(plan, 100, 1)
    check_fits(plan, 16, 2)  # exactly one step fits
    check_fits(plan_for(_cfg(batch_size=16), _rt(1)), 1, 1)  # one process: any size, as before
