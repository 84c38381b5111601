"""Archives for the serving benchmark: the ImageNet MobileNetV2 three ways, same weights everywhere.

The benchmark serves the 1000-class ImageNet MobileNetV2 (``../shared/weights``) rather than a
2-class fine-tune because TorchServe's stock ``image_classifier`` handler asks for the top 5 classes
and fails on a model with fewer; the network's cost is the same either way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet.pth"

STOCK_MODEL_FILE = '''from torchvision.models.mobilenetv2 import MobileNetV2


class ImageNetMobileNetV2(MobileNetV2):
    """The eager model file TorchServe's stock handler needs (one nn.Module class defined here)."""
'''


def categories() -> list[str]:
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def imagenet_run(run_dir: Path, weights: Path = WEIGHTS, check_images: list[Path] | None = None) -> Path:
    """A graft run folder (model.safetensors, model.json, model.onnx) holding the ImageNet MobileNetV2."""
    from graft.core.artifact import Lineage, ModelCard, save_weights, write_card
    from graft.core.zoo import build_model, get_backbone, load_state_dict_file

    run_dir.mkdir(parents=True, exist_ok=True)
    model = build_model("mobilenet_v2", 1000)
    model.load_state_dict(load_state_dict_file(weights), strict=True)
    save_weights(run_dir, model.state_dict())
    pre = get_backbone("mobilenet_v2").preprocessing
    write_card(run_dir, ModelCard(
        backbone="mobilenet_v2", num_classes=1000, labels=[f"{i}:{c}" for i, c in enumerate(categories())],
        preprocessing=pre, recipe={"benchmark": True},
        lineage=Lineage(dataset_digest="sha256:imagenet", pretrained_weights=str(weights)),
    ))
    from training.export import export_onnx

    export_onnx(run_dir, check_images=check_images)  # graft export's verified ONNX export
    return run_dir


def stock_mar(store: Path, name: str, config_yaml: str, weights: Path = WEIGHTS) -> Path:
    """``STORE/NAME-1.mar`` for TorchServe's stock ``image_classifier`` handler (eager model file + state dict)."""
    with tempfile.TemporaryDirectory(prefix="graft-stock-") as tmp:
        work = Path(tmp)
        (work / "model.py").write_text(STOCK_MODEL_FILE)
        (work / "model-config.yaml").write_text(config_yaml)
        index = {str(i): [f"n{i:05d}", c] for i, c in enumerate(categories())}
        (work / "index_to_name.json").write_text(json.dumps(index))
        subprocess.run(
            [str(Path(sys.executable).parent / "torch-model-archiver"), "--model-name", name, "--version", "1",
             "--handler", "image_classifier", "--model-file", str(work / "model.py"),
             "--serialized-file", str(weights), "--extra-files", str(work / "index_to_name.json"),
             "--config-file", str(work / "model-config.yaml"), "--export-path", str(work), "--force"],
            check=True, capture_output=True, text=True, env={**os.environ, "TMPDIR": str(work)},
        )
        target = store / f"{name}-1.mar"
        _move(work / f"{name}.mar", target)
    return target


def _move(src: Path, dst: Path) -> None:
    import shutil

    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), dst)
