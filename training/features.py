"""The feature cache: run the frozen prefix once, train the rest on its outputs.

When the frozen stages are in eval mode and no random augmentation runs through them, their output
is a fixed function of the image. Computing it once per image and training the remaining stages
on those tensors gives the same result as running the whole network every epoch, for a fraction
of the compute.

Two ways to cut a model into ``prefix`` (cached) and ``suffix`` (trained):
* head only: the input of the head module, captured with a hook (works for every architecture);
* a frozen prefix of stages: a torch.fx trace with the stages as leaves, cut after the last
  frozen stage when nothing downstream reads anything from before the cut.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from tqdm import tqdm

from training.freeze import FreezePlan

log = logging.getLogger(__name__)


@dataclass
class Split:
    prefix: nn.Module  # image batch -> cached tensor (run once, in eval mode, without gradients)
    suffix: nn.Module  # cached tensor -> logits; shares its parameters with the model
    boundary: str


class _HeadInput(nn.Module):
    """Runs the model and returns what its head received."""

    def __init__(self, model: nn.Module, head_root: str):
        super().__init__()
        self.model = model
        self.head_root = head_root

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        hook = self.model.get_submodule(self.head_root).register_forward_pre_hook(
            lambda _m, args: captured.append(args[0])
        )
        try:
            self.model(x)
        finally:
            hook.remove()
        return captured[0]


class _StageTracer(fx.Tracer):
    """Traces a model with its stage modules as opaque calls, so the graph reads stage by stage."""

    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or super().is_leaf_module(m, module_qualified_name)


def split_model(model: nn.Module, plan: FreezePlan, head_root: str) -> Split | None:
    """Cut ``model`` after its frozen stages; None when it cannot be cut exactly."""
    if not plan.frozen:
        return None
    if plan.head_only:
        return Split(_HeadInput(model, head_root), model.get_submodule(head_root), f"input of {head_root}")
    return _fx_split(model, plan)


def _fx_split(model: nn.Module, plan: FreezePlan) -> Split | None:
    frozen = {m for s in plan.stages if s.name in plan.frozen for m in s.modules}
    trainable = {m for s in plan.stages if s.name not in plan.frozen for m in s.modules}
    try:
        graph = _StageTracer(frozen | trainable).trace(model)
    except Exception as e:  # data-dependent control flow, unsupported ops: fall back to the full forward
        log.info("feature cache: cannot trace %s (%s)", type(model).__name__, e)
        return None
    nodes = list(graph.nodes)
    calls = [i for i, n in enumerate(nodes) if n.op == "call_module"]
    last_frozen = max((i for i in calls if nodes[i].target in frozen), default=-1)
    first_trainable = min((i for i in calls if nodes[i].target in trainable), default=len(nodes))
    if last_frozen < 0 or last_frozen > first_trainable:
        return None
    boundary = nodes[last_frozen]
    before = set(nodes[: last_frozen + 1])
    for n in nodes[last_frozen + 1 :]:
        if any(i in before and i is not boundary and i.op != "get_attr" for i in n.all_input_nodes):
            log.info("feature cache: %s is not a clean cut (%s reads from before it)", boundary.target, n.name)
            return None
    prefix = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in nodes[: last_frozen + 1]:
        env[n] = prefix.node_copy(n, lambda a: env[a])
    prefix.output(env[boundary])
    suffix = fx.Graph()
    senv: dict[fx.Node, fx.Node] = {boundary: suffix.placeholder("features")}
    for n in nodes[last_frozen + 1 :]:
        for i in n.all_input_nodes:
            if i not in senv:  # a parameter read (get_attr) from before the cut: read it here too
                senv[i] = suffix.node_copy(i, lambda a: senv[a])
        senv[n] = suffix.node_copy(n, lambda a: senv[a])
    return Split(fx.GraphModule(model, prefix), fx.GraphModule(model, suffix), f"output of {boundary.target}")


@torch.no_grad()
def compute_features(
    prefix: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    desc: str = "features",
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``prefix`` outputs for every image, as float32 on the CPU, with their targets."""
    feats: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    prefix.eval()
    for x, y in tqdm(batches, desc=desc, leave=False, disable=None):
        if x.numel() == 0:
            continue
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            out = prefix(x)
        feats.append(out.detach().float().cpu())
        targets.append(y)
    if not feats:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(targets)


def feature_batches(
    feats: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None,
    shuffle: bool,
    rank: int = 0,
    world: int = 1,
    sample_weights: torch.Tensor | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of cached features: shuffled (or class-balanced) per epoch, sharded by rank."""
    n = feats.shape[0]
    if sample_weights is not None:
        order = torch.multinomial(sample_weights, n, replacement=True, generator=generator)
    elif shuffle:
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    order = order[rank::world]
    return [(feats[idx], targets[idx]) for idx in order.split(batch_size)]


def describe(feats: torch.Tensor) -> str:
    shape: Any = tuple(feats.shape[1:])
    return f"{feats.shape[0]} x {shape} ({feats.numel() * 4 / 2**20:.1f} MiB)"
