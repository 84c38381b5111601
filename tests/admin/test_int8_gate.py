"""The gate judges the model that will serve (INT8 when the archive serves INT8), and a retrained candidate
is exported the way the champion was (INT8 included): the admin's default evaluate, prepare and export."""

from __future__ import annotations

import logging
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from admin.domain.gate import GateRule
from admin.domain.jobs import default_evaluate, default_prepare
from admin.domain.judge import judge, label_scores
from admin.domain.promotion import default_export
from graft.core.artifact import ONNX_INT8_FILE, UNAVERAGED_DIR, read_card, write_card
from graft.core.manifest import Item
from tests.support.artifacts import QUICK_INT8, images, shared_missing_reason
from tests.support.onnx_models import save_classifier
from training.export_settings import ExportSettings, _prepare_unaveraged, recorded_settings, serving_precision
from training.quantize import QuantizeOptions

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


def candidate_with_refit(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """An averaged candidate as training leaves it (no ONNX files yet), and its refit's own model inside it."""
    no_onnx = shutil.ignore_patterns("model.onnx", "model.int8.onnx")
    candidate = shutil.copytree(run, tmp_path / "candidate", ignore=no_onnx)
    return candidate, shutil.copytree(run, candidate / UNAVERAGED_DIR, ignore=no_onnx)


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


def test_the_refit_alone_is_judged_in_int8_beside_an_int8_candidate(
    serving_artifacts: tuple[Path, Path], int8_artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    """An averaged candidate's own model (``run/unaveraged``) is prepared like the candidate, and the gate's
    second judgement reads its INT8 model, not its FP32 weights."""
    run, _ = serving_artifacts
    champion, _ = int8_artifacts
    candidate, own = candidate_with_refit(run, tmp_path)
    assert serving_precision(own) == "fp32"
    default_prepare(candidate, champion)
    assert serving_precision(own) == "int8" and (own / ONNX_INT8_FILE).is_file()
    assert read_card(own).model_extra["export"]["int8"]["validation"]["passed"]  # type: ignore[index]
    holdout = []  # copies: the tiny run's data is the whole shared folder, so its own files would not be fair
    for path, label in images("val", per_class=15, offset=30):
        (tmp_path / "holdout" / label).mkdir(parents=True, exist_ok=True)
        holdout.append(Item(Path(shutil.copy(path, tmp_path / "holdout" / label)), label, "holdout"))
    rule = GateRule(min_holdout=len(holdout))
    decision, fair = judge(default_evaluate, candidate, champion, holdout, rule)
    assert len(fair.items) == len(holdout) and decision.unaveraged is not None
    assert decision.passed and not decision.unaveraged["rejected"], decision.reason  # the same weights: a tie
    always_bees(own / ONNX_INT8_FILE)  # the FP32 weights still answer as the champion does
    decision, _ = judge(default_evaluate, candidate, champion, holdout, rule)
    assert decision.unaveraged is not None and decision.unaveraged["rejected"], decision.reason
    assert not decision.passed and "the refit alone" in decision.reason


def test_the_refit_alone_takes_the_fp32_nodes_the_candidate_s_sensitivity_pass_picked(
    serving_artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    """Averaging is head-only, so the two share every backbone node: the refit's own INT8 model keeps the nodes
    the candidate's sensitivity pass kept in FP32, without a second pass (most of a quantization's time)."""
    import onnx

    run, _ = serving_artifacts
    candidate = shutil.copytree(run, tmp_path / "candidate", ignore=shutil.ignore_patterns("model.int8.onnx"))
    own = shutil.copytree(run, candidate / UNAVERAGED_DIR, ignore=shutil.ignore_patterns("model.int8.onnx"))
    options = QuantizeOptions(**{**QUICK_INT8, "fp32_nodes": None})  # the default: the pass decides
    picked = [next(n.name for n in onnx.load(str(candidate / "model.onnx")).graph.node if n.op_type == "Conv")]
    card = read_card(candidate)  # the record the candidate's own quantization would have left
    write_card(candidate, card.model_copy(update={"export": {"int8": {"fp32_nodes": picked}}}))
    _prepare_unaveraged(candidate, ExportSettings.build({"backend": "onnx"}, options))
    record = read_card(own).model_extra["export"]["int8"]  # type: ignore[index]
    assert record["fp32_nodes"] == picked and record["sensitivity"].startswith("skipped"), record["sensitivity"]
    assert record["validation"]["passed"] and serving_precision(own) == "int8"


def test_a_refit_whose_int8_model_fails_is_judged_in_fp32_and_rejects_nothing(
    serving_artifacts: tuple[Path, Path], int8_artifacts: tuple[Path, Path], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run, _ = serving_artifacts
    champion, _ = int8_artifacts
    candidate, own = candidate_with_refit(run, tmp_path)
    card = read_card(own)  # its calibration images are gone: quantizing it fails
    write_card(own, card.model_copy(update={"lineage": card.lineage.model_copy(
        update={"dataset_path": str(tmp_path / "gone")})}))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="training.export_settings"):
        default_prepare(candidate, champion)
    assert serving_precision(candidate) == "int8" and serving_precision(own) == "fp32"
    assert not (own / ONNX_INT8_FILE).exists() and "judged in FP32" in caplog.text


def test_no_recorded_choice_means_fp32_and_nothing_prepared(serving_artifacts: tuple[Path, Path], tmp_path: Path
                                                            ) -> None:  # fmt: skip
    run, _ = serving_artifacts
    candidate = tmp_path / "candidate"
    shutil.copytree(run, candidate)
    before = (candidate / "model.json").read_text()
    assert default_prepare(candidate, None) is None and default_prepare(candidate, tmp_path / "missing") is None
    assert (candidate / "model.json").read_text() == before


def test_preparing_again_reuses_the_onnx_and_int8_models_while_they_are_up_to_date(
    serving_artifacts: tuple[Path, Path], int8_artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    """On Kubernetes the training Job prepares the candidate and the admin prepares it again before judging:
    the second time exports and quantizes nothing, unless the INT8 model no longer matches."""
    run, _ = serving_artifacts
    champion, _ = int8_artifacts
    candidate, own = candidate_with_refit(run, tmp_path)
    default_prepare(candidate, champion)
    files = [d / f for d in (candidate, own) for f in ("model.onnx", ONNX_INT8_FILE)]
    before = {f: f.stat().st_mtime_ns for f in files}
    default_prepare(candidate, champion)
    assert {f: f.stat().st_mtime_ns for f in files} == before, "nothing is exported or quantized twice"
    (own / ONNX_INT8_FILE).unlink()  # the refit's INT8 model gone: both of its files are made again
    default_prepare(candidate, champion)
    after = {f: f.stat().st_mtime_ns for f in files}
    assert [f for f in files if after[f] != before[f]] == [own / "model.onnx", own / ONNX_INT8_FILE]
    assert serving_precision(own) == "int8" and serving_precision(candidate) == "int8"


def test_the_data_check_ranks_with_the_probabilities_of_the_model_as_it_serves(
    serving_artifacts: tuple[Path, Path], int8_artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    """``label_scores``: per image, the probability of the model's own answer and of the label it was given,
    from the real model (its INT8 file when it serves INT8); None for an unreadable file or a label it lacks."""
    run, _ = serving_artifacts
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    asked = [*HOLDOUT[:4], (broken, "ants"), (HOLDOUT[0][0], "wasps")]
    scores = label_scores(run, asked, "cpu")
    predicted, _ = default_evaluate(run, HOLDOUT[:4], "cpu")
    assert scores[4] is None and scores[5] is None
    for (top, given), said, (_, label) in zip(scores[:4], predicted, HOLDOUT[:4], strict=True):  # type: ignore[misc]
        assert 0.5 <= top <= 1 and 0 <= given <= top and (given == top) == (said == label)
    champion = shutil.copytree(int8_artifacts[0], tmp_path / "champion")
    always_bees(champion / ONNX_INT8_FILE)  # logits (0, 5) whatever it sees: p(bees) = 0.9933
    both = [HOLDOUT[0], HOLDOUT[-1]]
    assert {label for _, label in both} == {"ants", "bees"}
    expected = [[0.9933, 0.9933 if label == "bees" else 0.0067] for _, label in both]
    assert label_scores(champion, both, "cpu") == expected
