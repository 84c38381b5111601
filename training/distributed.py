"""Data-parallel training under ``torchrun``: how a step's batch splits across ranks, the sharded feature
cache pass, and what a distributed run records in ``model.json``.

The process group itself is joined in training/runtime.py (``init_runtime``: gloo on CPUs, NCCL on GPUs).
What a rank does differently from one process, and why:

* Batches. Every rank draws the *same* order a one-process run would draw (same sampler, same seed), cuts
  it into global batches and takes its slice of each (:class:`RankBatchSampler`, :func:`rank_slices`);
  DistributedDataParallel averages the gradients. With ``distributed_batch=split`` (the default) the global
  batch is ``batch_size``: the optimiser takes the same steps, with the same learning rate, as one process
  would, so a distributed run reproduces a one-process run of the same seed up to float reduction order,
  class-weighted losses averaged per rank, and BatchNorm statistics of trained stages taken per rank.
  With ``per-process`` each rank takes ``batch_size`` images, the effective batch is ``batch_size`` x
  world size and every learning rate is multiplied by the world size (the linear scaling rule, Goyal et
  al. 2017; the recipe's warm-up stays): more throughput per GPU, a different recipe.
* The feature cache. The frozen stages run once per image across all ranks: each rank computes a
  contiguous shard of the one-process order and the shards are gathered, so every rank holds the same
  cache, row for row the one a single process would build (:func:`sharded_cut_features`).
* Validation runs whole on every rank (it is small beside training, and identical numbers on every rank
  keep the best-epoch choice, early stopping and the auto recipe's choice in step without messages).
* Only rank 0 writes the run folder and progress, and logs below WARNING (:func:`quiet_other_ranks`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler, Subset

from graft.core.errors import UserInputError
from training.config import TrainConfig
from training.runtime import Runtime

log = logging.getLogger(__name__)


class WorldSizeError(UserInputError):
    """The number of processes does not fit the data or the batch size."""


@dataclass(frozen=True)
class DistPlan:
    """How one run's recipe maps onto its ranks (recorded as ``recipe.distributed`` in ``model.json``)."""

    world_size: int
    backend: str
    distributed_batch: str
    per_rank_batch: int
    effective_batch: int
    lr_scaling: str
    lr_factor: float

    def record(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "distributed_batch": self.distributed_batch,
            "per_rank_batch": self.per_rank_batch,
            "effective_batch": self.effective_batch,
            "lr_scaling": self.lr_scaling,
            "lr_factor": self.lr_factor,
        }


def plan_for(cfg: TrainConfig, rt: Runtime) -> DistPlan:
    """The per-rank batch and learning-rate factor for ``cfg`` on ``rt``'s world; raises WorldSizeError."""
    world = rt.world_size
    backend = dist.get_backend() if rt.distributed and dist.is_initialized() else "none"
    if cfg.distributed_batch == "per-process":
        return DistPlan(world, backend, "per-process", cfg.batch_size, cfg.batch_size * world,
                        "linear" if world > 1 else "none", float(world))  # fmt: skip
    if cfg.batch_size % world:
        raise WorldSizeError(
            f"batch size {cfg.batch_size} does not split evenly across {world} processes: give a multiple of "
            f"{world} (--batch-size), or --distributed-batch per-process to give each process --batch-size images"
        )
    return DistPlan(world, backend, "split", cfg.batch_size // world, cfg.batch_size, "none", 1.0)


def check_fits(plan: DistPlan, num_train: int, num_val: int) -> None:
    """One step needs a full effective batch of training images, and every rank some validation image."""
    if plan.world_size == 1:
        return
    if num_train < plan.effective_batch:
        raise WorldSizeError(
            f"{num_train} training images cannot fill one step of {plan.world_size} processes x "
            f"{plan.per_rank_batch} images: run fewer processes (--nproc-per-node / numProcPerNode), "
            "a smaller --batch-size, or train on more images"
        )
    if num_val < plan.world_size:
        raise WorldSizeError(
            f"{num_val} validation images cannot be shared by {plan.world_size} processes: run fewer processes "
            "or give more validation images"
        )


def rank_config(cfg: TrainConfig, plan: DistPlan) -> TrainConfig:
    """The config a rank trains with: its own share of the batch, the scaled learning rate.
    (model.json keeps the user's config; ``recipe.distributed`` says how it was mapped.)"""
    if plan.world_size == 1:
        return cfg
    return cfg.model_copy(update={"batch_size": plan.per_rank_batch, "lr": cfg.lr * plan.lr_factor})


def quiet_other_ranks(rt: Runtime) -> None:
    """Progress and INFO logs come from rank 0 only; other ranks still report warnings and errors."""
    if rt.is_main:
        return
    for name in ("training", "graft"):
        logging.getLogger(name).setLevel(logging.WARNING)


def rank_slices(order: torch.Tensor, global_batch: int, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    """Cut ``order`` into global batches and take rank ``rank``'s slice of each.

    Slices differ in size by at most one. A last, short batch with fewer indices than ranks is topped up
    from the start of the order, so no rank ever has an empty step (DDP would wait forever for it).
    """
    batches = list(order.split(global_batch))
    if world == 1:
        return batches
    if batches and len(batches[-1]) < world:
        batches[-1] = torch.cat([batches[-1], order[: world - len(batches[-1])]])
    return [torch.tensor_split(b, world)[rank] for b in batches]


class RankBatchSampler(Sampler[list[int]]):
    """This rank's slice of each global batch drawn from ``sampler`` (the sampler one process would use)."""

    def __init__(self, sampler: Sampler[int], global_batch: int, rank: int, world: int):
        self.sampler, self.global_batch, self.rank, self.world = sampler, global_batch, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.tensor(list(self.sampler), dtype=torch.long)
        for part in rank_slices(order, self.global_batch, self.rank, self.world):
            yield part.tolist()

    def __len__(self) -> int:
        assert isinstance(self.sampler, Sized)
        return math.ceil(len(self.sampler) / self.global_batch)


def loader_order(loader: DataLoader) -> list[int]:
    """The dataset indices, in order, that iterating ``loader`` in one process would visit.

    Iterating a DataLoader first draws its worker base seed from ``loader.generator``, then the sampler
    draws; doing the same here reproduces its order without loading a single image.
    """
    sampler: Any = loader.batch_sampler
    if isinstance(sampler, RankBatchSampler):
        sampler = sampler.sampler  # the one-process order, not this rank's slice of it
    if loader.generator is not None:
        torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
    out: list[int] = []
    for item in sampler:
        out.extend(item if isinstance(item, list) else [int(item)])
    return out


def gather_rows(t: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """Concatenate every rank's rows of ``t`` in rank order (ranks may hold different row counts)."""
    counts = torch.tensor([t.shape[0]], dtype=torch.long, device=rt.device)
    all_counts = [torch.zeros_like(counts) for _ in range(rt.world_size)]
    dist.all_gather(all_counts, counts)
    sizes = [int(c.item()) for c in all_counts]
    rows = max(sizes)
    # A rank with no rows still sends a padded block of the right shape: the shapes agree on every rank.
    padded = torch.zeros((rows, *t.shape[1:]), dtype=t.dtype, device=rt.device)
    padded[: t.shape[0]] = t.to(rt.device)
    parts = [torch.empty_like(padded) for _ in range(rt.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n].cpu() for p, n in zip(parts, sizes, strict=True)])


def shard(n: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous share of ``n`` items (sizes differ by at most one)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def sharded_cut_features(
    rt: Runtime,
    model: torch.nn.Module,
    loader: DataLoader,
    captures: list[tuple[str, str]],
    device: torch.device,
    desc: str,
    channels_last: bool = False,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``compute_cut_features`` with the images shared out across ranks and the tensors gathered on every
    rank, in the order one process would have produced them."""
    from training.features import compute_cut_features

    order = loader_order(loader)
    mine = [order[i] for i in shard(len(order), rt.rank, rt.world_size)]
    batch = loader.batch_size
    if isinstance(loader.batch_sampler, RankBatchSampler):
        batch = loader.batch_sampler.global_batch // rt.world_size
    part = DataLoader(Subset(loader.dataset, mine), batch_size=max(1, batch or 1), shuffle=False,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory)  # fmt: skip
    # check_fits guarantees every rank at least one image of each split, so every shard has a shape.
    feats, targets = compute_cut_features(model, part, captures, device, desc, channels_last)
    log.info("%s: %d of %d images on this rank", desc, len(mine), len(order))
    return [gather_rows(f, rt) for f in feats], gather_rows(targets, rt)
