"""An archive exported with --quantize int8: its settings select model.int8.onnx and the handler answers with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from graft.core.artifact import ONNX_INT8_FILE
from graft.inprocess import LocalHandler, unpack_mar
from tests.support.artifacts import INT8_MODEL, images, reference_probs, shared_missing_reason

pytestmark = pytest.mark.slow

if shared_missing_reason():
    pytest.skip(shared_missing_reason() or "", allow_module_level=True)

VAL = images("val", per_class=8, offset=10)


@pytest.fixture(scope="module")
def unpacked(int8_artifacts: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, store = int8_artifacts
    return unpack_mar(store / f"{INT8_MODEL}-1.mar", tmp_path_factory.mktemp("int8"))


def int8_probs(model_dir: Path, paths: list[Path]) -> torch.Tensor:
    """The INT8 ONNX model run directly on the handler's transform of these images."""
    from graft.core.artifact import read_card
    from graft.core.images import load_rgb
    from graft.core.transforms import eval_transform
    from training.quantize import logits, session

    tf = eval_transform(read_card(model_dir).preprocessing)
    x = np.stack([tf(load_rgb(p)).numpy() for p in paths])
    return torch.softmax(torch.from_numpy(logits(session(model_dir / ONNX_INT8_FILE), x)).double(), dim=-1)


def test_the_archive_says_int8_and_carries_only_the_int8_model(unpacked: Path) -> None:
    config = yaml.safe_load((unpacked / "model-config.yaml").read_text())
    assert config["handler"]["precision"] == "int8" and config["handler"]["backend"] == "onnx"
    assert (unpacked / ONNX_INT8_FILE).is_file() and not (unpacked / "model.onnx").exists()


def test_handler_answers_with_the_int8_model(unpacked: Path, int8_artifacts: tuple[Path, Path]) -> None:
    run, _ = int8_artifacts
    cfg = yaml.safe_load((unpacked / "model-config.yaml").read_text())
    cfg["handler"]["fast_decode"] = False  # full-resolution decoding, as the direct reference decodes
    handler = LocalHandler(unpacked, yaml_config=cfg)
    assert handler.service.backend.name == "onnx-int8"
    paths = [p for p, _ in VAL]
    out = handler.predict([{"body": p.read_bytes()} for p in paths])
    assert [r.status for r in out] == [200] * len(paths)
    int8 = int8_probs(unpacked, paths)
    fp32 = reference_probs(run, paths)
    for r, q in zip(out, int8, strict=True):
        top = r.body["predictions"][0]
        assert top["label"] == ["ants", "bees"][int(q.argmax())]
        assert top["score"] == pytest.approx(float(q.max()), abs=1e-4)  # the INT8 model's own score
    # INT8, not FP32: the scores differ from the FP32 model's (quantization noise), the answers mostly do not
    assert float((int8 - fp32).abs().max()) > 1e-4
    assert int((int8.argmax(1) == fp32.argmax(1)).sum()) >= len(paths) - 2


def test_a_missing_int8_model_fails_the_load_with_what_to_do(unpacked: Path, tmp_path: Path) -> None:
    import shutil

    from graft.core.errors import ArtifactError

    broken = tmp_path / "broken"
    shutil.copytree(unpacked, broken)
    (broken / ONNX_INT8_FILE).unlink()
    with pytest.raises(ArtifactError, match="--quantize int8"):
        LocalHandler(broken)
