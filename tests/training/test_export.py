"""Export: ONNX agrees with PyTorch on real images; the .mar carries everything TorchServe needs."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from graft.core.artifact import load_model, read_card
from graft.core.errors import ExportError
from graft.core.transforms import eval_transform
from tests.support.paths import REPO
from training import TrainConfig, fit
from training.data import load_rgb

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, hymenoptera: Path, mobilenet_weights: Path) -> Path:
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(
        data=hymenoptera, output=out, backbone="mobilenet_v2", weights=str(mobilenet_weights), max_per_class=8,
        epochs=4, recipe="head",
    )
    fit(cfg)
    return out


def test_onnx_matches_pytorch_on_real_images(run_dir: Path, hymenoptera: Path) -> None:
    import onnxruntime as ort

    from training.export import export_onnx

    check = export_onnx(run_dir)
    assert check.real_images and check.images >= 8
    assert check.max_abs_diff <= 1e-4 and check.top1_agreement == 1.0
    assert read_card(run_dir).model_extra["export"]["onnx"]["max_abs_diff"] == check.max_abs_diff  # type: ignore[index]
    # independently: other real images, batch sizes 1 and 5 (dynamic batch axis)
    model, card = load_model(run_dir)
    files = sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[-5:]
    x = torch.stack([eval_transform(card.preprocessing)(load_rgb(f)) for f in files])
    sess = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == ["logits"]
    with torch.no_grad():
        ref = model(x).numpy()
    for batch in (x[:1], x):
        got = sess.run(["logits"], {"input": batch.numpy()})[0]
        assert np.abs(got - ref[: len(batch)]).max() < 1e-4
        assert (got.argmax(1) == ref[: len(batch)].argmax(1)).all()


def test_export_fails_loudly_above_tolerance(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.export as export

    monkeypatch.setattr(export, "ONNX_TOLERANCE", 0.0)
    with pytest.raises(ExportError, match="differ from PyTorch"):
        export.export_onnx(run_dir)


def z_text(mar: Path, name: str) -> str:
    with zipfile.ZipFile(mar) as z:
        return z.read(name).decode()


def test_mar_carries_handler_weights_card_onnx_and_config(run_dir: Path, tmp_path: Path) -> None:
    from training.export import export_run

    reqs = REPO / "deploy" / "kserve" / "requirements.txt"
    mar = export_run(
        run_dir, tmp_path / "store", "antbee", "2", model_config={"backend": "onnx", "batch_size": 4},
        requirements_file=reqs,
    )  # fmt: skip
    assert mar == tmp_path / "store" / "antbee-2.mar"
    with zipfile.ZipFile(mar) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        config = yaml.safe_load(z.read("model-config.yaml"))
        card = json.loads(z.read("model.json"))
    for f in ("model.json", "model.safetensors", "model.onnx", "model-config.yaml", "image_classifier.py"):
        assert f in names
    assert "handlers/__init__.py" in names and "graft/core/artifact.py" in names and "graft/core/zoo.py" in names
    assert "graft/__init__.py" in names
    assert not any(n.startswith(("training/", "admin/", "graft/cli", "graft/torchserve", "tests/")) for n in names)
    assert manifest["model"]["modelName"] == "antbee" and manifest["model"]["modelVersion"] == "2"
    assert z_text(mar, manifest["model"]["requirementsFile"]) == reqs.read_text()
    assert config["batchSize"] == 4 and config["handler"]["backend"] == "onnx"
    assert card["labels"] == ["ants", "bees"]


def test_archiver_stages_in_a_private_tmpdir(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch-model-archiver stages in $TMPDIR/<model name>: two exports of one name must not share it."""
    import training.export as export

    seen: list[str] = []
    real_run = subprocess.run

    def spy(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        env = kw.get("env")
        assert isinstance(env, dict)
        seen.append(env["TMPDIR"])
        assert Path(env["TMPDIR"]).is_dir()
        return real_run(cmd, **kw)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(export.subprocess, "run", spy)
    for i in (1, 2):
        mar = export.build_mar(run_dir, tmp_path / f"store{i}", "same", str(i), {"backend": "torch"})
        with zipfile.ZipFile(mar) as z:
            assert json.loads(z.read("MAR-INF/MANIFEST.json"))["model"]["modelVersion"] == str(i)
    assert len(set(seen)) == 2 and all(not Path(t).exists() for t in seen)  # private, and cleaned up


def test_cli_trains_and_exports_end_to_end(hymenoptera: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "-m", "graft.cli", "train", "--data", str(hymenoptera), "--output", str(run),
         "--max-per-class", "4", "--epochs", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-2000:]
    assert json.loads(train.stdout.strip().splitlines()[-1])["run_dir"] == str(run)
    assert read_card(run).backbone == "efficientnet_lite0"
    export = subprocess.run(
        [sys.executable, "-m", "graft.cli", "export", str(run), "--model-store", str(tmp_path / "s"), "--name", "m"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr[-2000:]
    assert (tmp_path / "s" / "m-1.0.mar").is_file()


def test_cli_reports_user_errors_without_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "graft.cli", "train", "--data", str(tmp_path / "missing"), "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_lite0_onnx_matches_the_model_as_served(hymenoptera: Path, tmp_path: Path) -> None:
    # Regression: efficientnet_lite's set_swish() also swaps its ReLU6 for Swish, so an export that
    # called it unconditionally produced an ONNX model that agreed with itself but not with the model
    # the torch backend serves (logits off by ~50).
    import onnxruntime as ort

    from training.export import export_onnx

    fit(TrainConfig(data=hymenoptera, output=tmp_path, backbone="efficientnet_lite0", max_per_class=3, epochs=1,
                    recipe="head"))  # fmt: skip
    export_onnx(tmp_path)
    model, card = load_model(tmp_path)  # fresh, as the handler loads it
    files = sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[:4]
    x = torch.stack([eval_transform(card.preprocessing)(load_rgb(f)) for f in files])
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(sess.run(["logits"], {"input": x.numpy()})[0] - ref).max() < 1e-4
