"""One epoch of training or evaluation, over images or over cached features alike."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from training.runtime import Runtime, all_reduce_sum

# (inputs, targets), or (inputs, targets, extra) for a train_epoch given an ``extra_loss``
Batches = Iterable[tuple[torch.Tensor, ...]]
ExtraLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    n: int
    preds: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)


def autocast_for(rt: Runtime, amp: bool) -> AbstractContextManager[object]:
    if rt.cuda and amp:
        # bf16 needs no loss scaling, and every GPU we target supports it.
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _prepare(x: torch.Tensor, rt: Runtime, channels_last: bool) -> torch.Tensor:
    x = x.to(rt.device, non_blocking=True)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_epoch(
    module: nn.Module,
    batches: Batches,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    rt: Runtime,
    set_mode: Callable[[], object],
    amp: bool = True,
    channels_last: bool = False,
    desc: str = "train",
    extra_loss: ExtraLoss | None = None,
) -> EpochStats:
    set_mode()
    total_loss, correct, n = 0.0, 0, 0
    bar = tqdm(batches, desc=desc, leave=False, disable=None if rt.is_main else True)
    for x, y, *extra in bar:
        if x.numel() == 0:
            continue
        x, y = _prepare(x, rt, channels_last), y.to(rt.device)
        with autocast_for(rt, amp):
            out = module(x)
            logits = out.float()
            loss = loss_fn(logits, y)
            if extra_loss is not None:
                loss = loss + extra_loss(logits, extra[0].to(rt.device), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total_loss += loss.item() * len(y)
        correct += int((out.argmax(1) == y).sum())
        n += len(y)
        bar.set_postfix(loss=f"{total_loss / max(n, 1):.4f}")
    loss_sum, correct_sum, count = all_reduce_sum(rt, [total_loss, float(correct), float(n)])
    return EpochStats(loss_sum / max(count, 1), correct_sum / max(count, 1), int(count))


@torch.no_grad()
def eval_epoch(
    module: nn.Module,
    batches: Batches,
    loss_fn: nn.Module,
    rt: Runtime,
    amp: bool = True,
    channels_last: bool = False,
) -> EpochStats:
    module.eval()
    total_loss, n = 0.0, 0
    preds: list[int] = []
    targets: list[int] = []
    for x, y, *_ in batches:
        if x.numel() == 0:
            continue
        x, y = _prepare(x, rt, channels_last), y.to(rt.device)
        with autocast_for(rt, amp):
            out = module(x).float()
        total_loss += float(loss_fn(out, y)) * len(y)
        n += len(y)
        preds.extend(out.argmax(1).tolist())
        targets.extend(y.tolist())
    correct = sum(int(p == t) for p, t in zip(preds, targets, strict=True))
    return EpochStats(total_loss / max(n, 1), correct / max(n, 1), n, preds, targets)
