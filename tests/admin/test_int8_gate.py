"""The gate judges the model that will serve (INT8 when the archive serves INT8), and a retrained candidate
is exported the way the champion was (INT8 included): the admin's default evaluate, prepare and export."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from admin.domain.jobs import default_evaluate, default_prepare
from admin.domain.promotion import default_export
from graft.core.artifact import ONNX_INT8_FILE, read_card
from tests.support.artifacts import images, shared_missing_reason
from tests.support.onnx_models import save_classifier
from training.export_settings import recorded_settings, serving_precision

pytestmark = pytest.mark.slow

if shared_missing_reason():
    pytest.skip(shared_missing_reason() or "", allow_module_level=True)

HOLDOUT = images("val", per_class=6, offset=40)


def always_bees(path: Path) -> None:
    """An ONNX model with the run's input and output that answers 'bees' (class 1) whatever it sees."""
    from onnx import helper, numpy_helper

    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["logits"]),
    ]
    inits = [numpy_helper.from_array(__import__("numpy").zeros((3, 2), "float32"), "w"),
             numpy_helper.from_array(__import__("numpy").array([0.0, 5.0], "float32"), "b")]  # fmt: skip
    save_classifier(path, "bees", nodes, inits, size=224, classes=2)


def test_gate_evaluates_the_int8_model_when_the_archive_serves_int8(
    int8_artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    run8, _ = int8_artifacts
    champion = tmp_path / "champion"
    shutil.copytree(run8, champion)
    assert serving_precision(champion) == "int8"
    fair, labels = default_evaluate(champion, HOLDOUT, "cpu")
    assert labels == ["ants", "bees"] and sum(p == t for p, (_, t) in zip(fair, HOLDOUT, strict=True)) >= 8
    always_bees(champion / ONNX_INT8_FILE)  # what INT8 answers is now unmistakable
    tampered, _ = default_evaluate(champion, HOLDOUT, "cpu")
    assert tampered == ["bees"] * len(HOLDOUT), "the gate must judge model.int8.onnx, not the FP32 weights"


def test_a_candidate_is_prepared_and_exported_like_an_int8_champion(
    serving_artifacts: tuple[Path, Path], int8_artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    run, _ = serving_artifacts
    champion, _ = int8_artifacts
    candidate = tmp_path / "candidate"
    shutil.copytree(run, candidate, ignore=shutil.ignore_patterns("model.onnx", "model.int8.onnx"))
    assert serving_precision(candidate) == "fp32"
    default_prepare(candidate, champion)
    assert serving_precision(candidate) == "int8", "the candidate serves as the champion does"
    assert (candidate / ONNX_INT8_FILE).is_file()
    record = read_card(candidate).model_extra["export"]["int8"]  # type: ignore[index]
    assert record["validation"]["passed"] and record["options"] == recorded_settings(champion).quantize.as_record()  # type: ignore[union-attr]
    predictions, _ = default_evaluate(candidate, HOLDOUT, "cpu")  # judged in INT8, as it will serve
    assert all(p in ("ants", "bees") for p in predictions)
    mar = default_export(candidate, tmp_path / "store", "antsbees", "7", [p for p, _ in HOLDOUT[:2]])
    with zipfile.ZipFile(mar) as z:
        config = yaml.safe_load(z.read("model-config.yaml"))
        assert ONNX_INT8_FILE in z.namelist()
    assert config["handler"]["precision"] == "int8" and config["maxBatchDelay"] == 50  # the champion's settings


def test_no_recorded_choice_means_fp32_and_nothing_prepared(serving_artifacts: tuple[Path, Path], tmp_path: Path
                                                            ) -> None:  # fmt: skip
    run, _ = serving_artifacts
    candidate = tmp_path / "candidate"
    shutil.copytree(run, candidate)
    before = (candidate / "model.json").read_text()
    assert default_prepare(candidate, None) is None and default_prepare(candidate, tmp_path / "missing") is None
    assert (candidate / "model.json").read_text() == before
