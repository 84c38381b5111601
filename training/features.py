"""The feature cache: run the frozen prefix once, train the rest on its outputs.

When the frozen stages are in eval mode and no random augmentation runs through them, their output
is a fixed function of the image. Computing it once per image and training the remaining stages
on those tensors gives the same result as running the whole network every epoch, for a fraction
of the compute.

Three ways to cut a model into ``prefix`` (cached) and ``suffix`` (trained):
* head only: the input of the head module, captured with a hook (works for every architecture);
* a frozen prefix of stages: a torch.fx trace with the stages as leaves, cut after the last
  frozen stage when nothing downstream reads anything from before the cut;
* where that trace fails or is not a clean cut (EfficientNet-Lite0's forward reads the batch size
  from its input): the model's own forward, stopped after the last frozen stage (prefix), or with
  the frozen stages skipped and the last one answering the cached tensor (suffix). The stages run
  in order, so that is the same computation; it is checked on a probe batch before it is used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from tqdm import tqdm

from training.distributed import rank_slices
from training.forward_cut import ForwardPrefix, ForwardSuffix, capture_tensors, cut_matches, probe_outputs
from training.freeze import FreezePlan
from training.memory import release_freed_memory

log = logging.getLogger(__name__)


@dataclass
class Split:
    prefix: nn.Module  # image batch -> cached tensor (run once, in eval mode, without gradients)
    suffix: nn.Module  # cached tensor -> logits; shares its parameters with the model
    boundary: str
    # Where the cached tensor shows up in a forward of the whole model: ("input" | "output", module name).
    # Several cuts are cached in one pass over the images by watching these (compute_cut_features).
    capture: tuple[str, str]


class _StageTracer(fx.Tracer):
    """Traces a model with its stage modules as opaque calls, so the graph reads stage by stage."""

    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or super().is_leaf_module(m, module_qualified_name)


def split_model(
    model: nn.Module, plan: FreezePlan, head_root: str, probe: torch.Tensor | None = None
) -> Split | None:
    """Cut ``model`` after its frozen stages; None when it cannot be cut exactly.

    ``probe`` (a small image batch) lets the forward cut be checked, and so tried, where fx fails.
    """
    return split_models(model, [plan], head_root, probe)[0]


def split_models(
    model: nn.Module, plans: Sequence[FreezePlan], head_root: str, probe: torch.Tensor | None = None
) -> list[Split | None]:
    """:func:`split_model` for several plans of one model: one fx trace, one probe forward."""
    out: list[Split | None] = []
    graph = None
    for plan in plans:
        if not plan.frozen:
            out.append(None)
        elif plan.head_only:
            head = model.get_submodule(head_root)
            prefix = ForwardPrefix(model, head_root, "input")
            out.append(Split(prefix, head, f"input of {head_root}", ("input", head_root)))
        else:
            graph = graph or _Trace(model, plan)
            out.append(_fx_split(model, graph.graph, plan) if graph.graph is not None else None)
    todo = [i for i, plan in enumerate(plans) if out[i] is None and plan.frozen]
    if todo and probe is not None:
        boundaries = [boundary_module(plans[i]) for i in todo]
        reference, features = probe_outputs(model, probe, boundaries)
        for i, feats in zip(todo, features, strict=True):
            out[i] = _forward_split(model, plans[i], feats, reference)
    return out


def boundary_module(plan: FreezePlan) -> str:
    """The module whose output is the cut: the last module of the last frozen stage."""
    last = next(s for s in plan.stages if s.name == plan.frozen[-1])
    return last.modules[-1]


def _forward_split(
    model: nn.Module, plan: FreezePlan, features: torch.Tensor | None, reference: torch.Tensor
) -> Split | None:
    boundary = boundary_module(plan)
    skipped = [m for s in plan.stages if s.name in plan.frozen for m in s.modules if m != boundary]
    prefix, suffix = ForwardPrefix(model, boundary), ForwardSuffix(model, skipped, boundary)
    if not cut_matches(model, suffix, features, reference):
        return None
    log.info("feature cache: cut %s after %s through its own forward", type(model).__name__, boundary)
    return Split(prefix, suffix, f"output of {boundary}", ("output", boundary))


class _Trace:
    """The model's graph with every stage as one call (the same graph for every plan of the model)."""

    def __init__(self, model: nn.Module, plan: FreezePlan):
        self.graph: fx.Graph | None = None
        try:
            self.graph = _StageTracer({m for s in plan.stages for m in s.modules}).trace(model)
        except Exception as e:  # data-dependent control flow, unsupported ops: no fx cut
            log.info("feature cache: cannot trace %s (%s)", type(model).__name__, e)


def _fx_split(model: nn.Module, graph: fx.Graph, plan: FreezePlan) -> Split | None:
    frozen = {m for s in plan.stages if s.name in plan.frozen for m in s.modules}
    trainable = {m for s in plan.stages if s.name not in plan.frozen for m in s.modules}
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
            log.debug("feature cache: no fx cut after %s (%s reads from before it)", boundary.target, n.name)
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
    target = str(boundary.target)
    cut = ("output", target)
    return Split(fx.GraphModule(model, prefix), fx.GraphModule(model, suffix), f"output of {target}", cut)


class _Rows:
    """One cut's tensors for every image, written batch by batch into one tensor allocated at the first batch
    when the number of images is known (a DataLoader's dataset): the pass then holds each image's features
    once, not once in per-batch chunks and again in the tensor joining them. More rows than expected (or no
    count) fall back to chunks joined at the end."""

    def __init__(self, capacity: int | None):
        self.capacity = capacity
        self.buf: torch.Tensor | None = None
        self.chunks: list[torch.Tensor] = []
        self.n = 0

    def add(self, out: torch.Tensor) -> None:
        rows = out.shape[0]
        if self.capacity is not None and not self.chunks and self.n + rows <= self.capacity:
            if self.buf is None:
                self.buf = torch.empty((self.capacity, *out.shape[1:]), dtype=torch.float32)
            self.buf[self.n : self.n + rows].copy_(out)  # casts to float32 and moves to the CPU in one step
        else:
            if self.buf is not None:
                self.chunks.append(self.buf[: self.n])
                self.buf = None
            self.chunks.append(out.float().cpu())
        self.n += rows

    def tensor(self) -> torch.Tensor:
        if self.chunks:
            return torch.cat(self.chunks)
        if self.buf is None:
            return torch.empty(0)
        return self.buf[: self.n]  # images a collate dropped leave rows unused: a view, not a second copy


def _images_expected(batches: Iterable[Any]) -> int | None:
    dataset = getattr(batches, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:  # an iterable dataset has no length
        return None


@torch.no_grad()
def compute_cut_features(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    captures: list[tuple[str, str]],
    device: torch.device,
    desc: str = "features",
    channels_last: bool = False,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The tensors at several cuts (``Split.capture``) for every image, from one forward pass per batch,
    stopped once the last of them exists; float32 on the CPU, with the targets."""
    expected = _images_expected(batches)
    feats = [_Rows(expected) for _ in captures]
    targets: list[torch.Tensor] = []
    model.eval()
    for x, y in tqdm(batches, desc=desc, leave=False, disable=None):
        if x.numel() == 0:
            continue
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            outs = capture_tensors(model, x, captures)
        for rows, out in zip(feats, outs, strict=True):
            rows.add(out)
        targets.append(y)
        # This batch's input and activations are freed now; give their pages back before the next batch
        # (training/memory.py: otherwise the heap's resident size creeps up over a long pass).
        del x, outs
        release_freed_memory()
    if not targets:
        return [torch.empty(0) for _ in captures], torch.empty(0, dtype=torch.long)
    return [rows.tensor() for rows in feats], torch.cat(targets)


class FeatureBatches:
    """Mini-batches of cached features, gathered one at a time as they are iterated: indexing every batch up
    front would copy the whole cache once more per epoch."""

    def __init__(
        self,
        feats: torch.Tensor,
        targets: torch.Tensor,
        slices: list[torch.Tensor],
        extra: torch.Tensor | None = None,
    ):
        self.feats, self.targets, self.slices, self.extra = feats, targets, slices, extra

    def __len__(self) -> int:
        return len(self.slices)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        # ``extra``: one more row-aligned tensor per batch (the champion's logits, for a distilling refit)
        for idx in self.slices:
            if self.extra is None:
                yield self.feats[idx], self.targets[idx]
            else:
                yield self.feats[idx], self.targets[idx], self.extra[idx]


def feature_batches(
    feats: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None,
    shuffle: bool,
    rank: int = 0,
    world: int = 1,
    sample_weights: torch.Tensor | None = None,
    extra: torch.Tensor | None = None,
) -> FeatureBatches:
    """Mini-batches of cached features: shuffled (or class-balanced) per epoch; under torchrun
    ``batch_size`` is the global batch and each rank takes its slice of every batch."""
    n = feats.shape[0]
    if sample_weights is not None:
        order = torch.multinomial(sample_weights, n, replacement=True, generator=generator)
    elif shuffle:
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    return FeatureBatches(feats, targets, rank_slices(order, batch_size, rank, world), extra)


def describe(feats: torch.Tensor) -> str:
    shape: Any = tuple(feats.shape[1:])
    return f"{feats.shape[0]} x {shape} ({feats.numel() * 4 / 2**20:.1f} MiB)"
