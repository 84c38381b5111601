"""Build a small real model artifact for serving tests and benchmarks.

A MobileNetV2 (the shared ImageNet weights) with a 2-class head fitted on frozen features of a few
ants/bees images: seconds of CPU, yet it classifies real images. The run folder follows the
project's contract (``model.safetensors`` + ``model.json``) and is exported (verified ONNX + ``.mar``)
by ``training.export.export_run``, the code behind ``graft export``.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch

from graft.core.images import load_rgb
from tests.support.paths import HYMENOPTERA as DATA
from tests.support.paths import MOBILENET_V2 as WEIGHTS
from tests.support.paths import SHARED

LABELS = ["ants", "bees"]


def shared_missing_reason() -> str | None:
    if not DATA.is_dir() or not WEIGHTS.is_file():
        return f"../shared (ants/bees data and MobileNetV2 weights) not found at {SHARED}"
    return None


def images(split: str, per_class: int, offset: int = 0) -> list[tuple[Path, str]]:
    """Sorted JPEGs of each class (the placeholder GIF excluded), ``per_class`` of each."""
    out: list[tuple[Path, str]] = []
    for label in LABELS:
        files = sorted(p for p in (DATA / split / label).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        out += [(p, label) for p in files[offset : offset + per_class]]
    return out


def _features(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():  # not inference_mode: the head trains on these features
        features = model.get_submodule("features")
        return torch.nn.functional.adaptive_avg_pool2d(features(batch), 1).flatten(1)


def train_tiny_run(run_dir: Path, per_class: int = 12, steps: int = 150, seed: int = 0) -> Path:
    """Fit the head on frozen features of ``per_class`` training images per class; write the run folder."""
    from graft.core.artifact import Lineage, ModelCard, save_weights, write_card
    from graft.core.transforms import eval_transform
    from graft.core.zoo import create_model

    torch.manual_seed(seed)
    model, pre, report = create_model("mobilenet_v2", len(LABELS), weights=str(WEIGHTS))
    model.eval()
    spec = pre
    tf = eval_transform(spec)
    train = images("train", per_class)
    x = torch.stack([tf(load_rgb(p)) for p, _ in train])
    y = torch.tensor([LABELS.index(label) for _, label in train])
    feats = _features(model, x)
    head = cast(torch.nn.Linear, model.get_submodule("classifier.1"))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(feats), y)
        loss.backward()
        opt.step()
    run_dir.mkdir(parents=True, exist_ok=True)
    save_weights(run_dir, model.state_dict())
    card = ModelCard(
        backbone="mobilenet_v2",
        num_classes=len(LABELS),
        labels=LABELS,
        preprocessing=spec,
        recipe={"head_only": True, "steps": steps, "per_class": per_class, "test_fixture": True},
        # dataset_path: where its images came from (INT8 calibration and checks read the run's data from there)
        lineage=Lineage(dataset_digest="sha256:test-fixture", dataset_path=str(DATA), pretrained_weights=report.source,
                        num_train=len(train)),
    )
    write_card(run_dir, card)
    return run_dir


def export(run_dir: Path, store: Path, name: str, version: str, quantize: object = None, **model_config: object
           ) -> Path:  # fmt: skip
    """``graft export``'s code path: verified ONNX export (and INT8 with ``quantize``), then the ``.mar``."""
    from training.export import export_run

    return export_run(run_dir, store, name, version, check_images=[p for p, _ in images("val", 4)],
                      model_config=dict(model_config), quantize=quantize)  # type: ignore[arg-type]


MODEL = "antsbees"


def cached_store(base: Path) -> tuple[Path, Path]:
    """(run folder, model store) built once per pytest session under ``base`` (the session's basetemp).

    The store holds ``antsbees-1.mar`` (ONNX Runtime backend) and ``antsbees-2.mar`` (PyTorch backend,
    2 MB per-image limit so the body-size refusal is reachable below the frontend's own limit).
    """
    root = base / "graft-serving-artifacts"
    run, store = root / "run", root / "store"
    if not (root / "done").exists():
        train_tiny_run(run)
        export(run, store, MODEL, "1", backend="onnx", max_batch_delay_ms=50)
        export(run, store, MODEL, "2", backend="torch", max_batch_delay_ms=50, max_body_bytes=2_000_000)
        (root / "done").touch()
    return run, store


INT8_MODEL = "antsbees_int8"
# Quick INT8 settings for tests: every node INT8 (no sensitivity pass), a small calibration set, and a loose
# guard (the tiny model is not what the guard tests check).
QUICK_INT8 = {"fp32_nodes": (), "calibration_images": 64, "max_accuracy_drop": 10.0}


def cached_int8_store(base: Path) -> tuple[Path, Path]:
    """(run folder, store) with ``antsbees_int8-1.mar`` serving INT8, from a copy of :func:`cached_store`'s run."""
    import shutil

    from training.quantize import QuantizeOptions

    run, _ = cached_store(base)
    root = base / "graft-int8-artifacts"
    run8, store = root / "run", root / "store"
    if not (root / "done").exists():
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(run, run8)
        export(run8, store, INT8_MODEL, "1", quantize=QuantizeOptions(**QUICK_INT8), backend="onnx",  # type: ignore[arg-type]
               max_batch_delay_ms=50)
        (root / "done").touch()
    return run8, store


def reference_probs(run_dir: Path, paths: list[Path]) -> torch.Tensor:
    """The in-process model on these images: the answer the server must reproduce."""
    from graft.core.artifact import load_model
    from graft.core.transforms import eval_transform

    model, card = load_model(run_dir)
    tf = eval_transform(card.preprocessing)
    with torch.inference_mode():
        return torch.softmax(model(torch.stack([tf(load_rgb(p)) for p in paths])).double(), dim=-1)
