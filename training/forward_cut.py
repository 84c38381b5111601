"""Cutting a model at a stage boundary through its own forward, for models torch.fx cannot cut.

A model's stages run in order, so "the frozen prefix" is the forward stopped right after the last
frozen stage, and "the trainable suffix" is the forward with the frozen stages skipped and the
last of them answering the cached tensor. Nothing about the model's code needs to be traceable:
EfficientNet-Lite0's forward, which reads the batch size from its input (so an fx cut after any of
its blocks reads from before the cut), is cut this way. The skipped stages answer a 1x1 stand-in
of the right batch size, so whatever glue the forward runs between them (an activation, a pool)
costs nothing. A model whose forward does something the stand-in breaks is caught by a check on a
probe batch, and the caller falls back to the whole network.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


class _StopForwardSignal(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a hook to end a forward pass once the wanted output exists."""


@contextmanager
def _replaced_forwards(model: nn.Module, answers: dict[str, Callable[..., Any]]) -> Iterator[None]:
    """Temporarily make the named submodules answer ``answers[name](*args)`` instead of running."""
    saved: list[tuple[nn.Module, Any]] = []
    try:
        for name, answer in answers.items():
            module = model.get_submodule(name)
            saved.append((module, module.__dict__.get("forward")))
            module.forward = answer  # type: ignore[method-assign]
        yield
    finally:
        for module, old in reversed(saved):
            if old is None:
                del module.forward
            else:
                module.forward = old  # type: ignore[method-assign]


def capture_tensors(model: nn.Module, x: torch.Tensor, captures: Sequence[tuple[str, str]]) -> list[torch.Tensor]:
    """What the named submodules received (``("input", name)``: the first positional argument) or answered
    (``("output", name)``) during one forward of ``model``, which ends as soon as all of them exist: the rest
    of the network never runs."""
    found: dict[tuple[str, str], torch.Tensor] = {}
    wanted = set(captures)

    def keep(key: tuple[str, str], value: torch.Tensor) -> None:
        # A copy: the forward may go on to modify the tensor in place (a ReLU after a stem BatchNorm).
        found.setdefault(key, value.detach().clone())
        if wanted <= found.keys():
            raise _StopForwardSignal

    handles = []
    for kind, name in wanted:
        module = model.get_submodule(name)
        if kind == "input":
            handles.append(module.register_forward_pre_hook(lambda _m, args, key=(kind, name): keep(key, args[0])))
        else:
            handles.append(module.register_forward_hook(lambda _m, _a, out, key=(kind, name): keep(key, out)))
    try:
        model(x)
    except _StopForwardSignal as stop:
        # The traceback holds every frame the forward left (their inputs and activations: a whole batch). If
        # anything in the model's code made a reference cycle through them (a frame that kept the exception),
        # they would live until a cyclic collection, batch after batch: clear their locals now.
        traceback.clear_frames(stop.__traceback__)
        stop.__traceback__ = None
    finally:
        for h in handles:
            h.remove()
    missing = wanted - found.keys()
    if missing:
        raise RuntimeError(f"the forward of {type(model).__name__} never reached {sorted(missing)}")
    return [found[c] for c in captures]


class ForwardPrefix(nn.Module):
    """Image batch -> the output (or the input, ``where="input"``) of module ``boundary``: the model's
    forward, watched there."""

    def __init__(self, model: nn.Module, boundary: str, where: str = "output"):
        super().__init__()
        self.model = model
        self.boundary = boundary
        self.where = where

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return capture_tensors(self.model, x, [(self.where, self.boundary)])[0]


class ForwardSuffix(nn.Module):
    """Output of ``boundary`` -> logits: the model's forward with ``skipped`` (the frozen stages) not run."""

    def __init__(self, model: nn.Module, skipped: Sequence[str], boundary: str):
        super().__init__()
        self.model = model
        self.skipped = tuple(skipped)
        self.boundary = boundary

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        stand_in = features.new_zeros(features.shape[0], 1, 1, 1)
        answers: dict[str, Callable[..., Any]] = {n: (lambda *_a, **_k: stand_in) for n in self.skipped}
        answers[self.boundary] = lambda *_a, **_k: features
        with _replaced_forwards(self.model, answers):
            out: torch.Tensor = self.model(stand_in)
        return out


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block; every submodule's own mode comes back afterwards."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


@torch.no_grad()
def probe_outputs(model: nn.Module, probe: torch.Tensor, boundaries: Sequence[str]) -> tuple[torch.Tensor, list[Any]]:
    """The model's output on ``probe`` (eval mode) and, from the same forward, each boundary's output."""
    found: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(b).register_forward_hook(lambda _m, _a, out, b=b: found.setdefault(b, out.clone()))
        for b in boundaries
    ]
    try:
        with eval_mode(model):
            out = model(probe)
    finally:
        for h in handles:
            h.remove()
    return out, [found.get(b) for b in boundaries]


@torch.no_grad()
def cut_matches(model: nn.Module, suffix: nn.Module, features: torch.Tensor | None, reference: torch.Tensor) -> bool:
    """Whether ``suffix(features)`` is ``reference``, the model's own output on the probe (in eval mode)."""
    if features is None:
        log.info("feature cache: the forward never ran the boundary module")
        return False
    with eval_mode(model):
        try:
            cut = suffix(features)
        except Exception as e:  # the stand-in broke the forward's glue: this model cannot be cut so
            log.info("feature cache: the forward cannot skip its frozen stages (%s: %s)", type(e).__name__, e)
            return False
    same = reference.shape == cut.shape and torch.allclose(reference, cut, rtol=1e-4, atol=1e-5)
    if not same:
        log.info("feature cache: the forward cut does not reproduce the model's output")
    return bool(same)
