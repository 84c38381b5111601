"""Tiny hand-built ONNX classifiers for the INT8 tests: image batch ``input`` (N, 3, H, W) -> ``logits``."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_classifier(path: Path, name: str, nodes: list[Any], inits: list[Any], size: int, classes: int) -> None:
    """Save the graph of ``nodes`` and ``inits`` with the input and output names graft's models have."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", classes])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what the installed ONNX Runtime reads
    onnx.save(model, str(path))
