"""Transparent icons train and serve as well as the same icons on white; a truncated PNG is skipped by name.

The icons are black shapes on a transparent background, drawn here. Dropping alpha would make each one a
solid black square (what ``convert("RGB")`` did: validation near chance); composited on the card's
background they are black shapes on white, as the handler serves them.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from graft.core.artifact import read_card
from graft.inprocess import LocalHandler, unpack_mar
from training import TrainConfig, fit

pytestmark = pytest.mark.slow

SHAPES = ("circle", "cross", "square", "triangle")
PER_SPLIT = {"train": 10, "val": 5}


def icon(shape: str, rng: random.Random, transparent: bool = True) -> Image.Image:
    """A black ``shape`` at a random size and place on 64x64 transparent (or white) pixels."""
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0) if transparent else (255, 255, 255, 255))
    d = ImageDraw.Draw(img)
    r = rng.randint(12, 22)
    cx, cy = rng.randint(r + 2, 62 - r), rng.randint(r + 2, 62 - r)
    box = (cx - r, cy - r, cx + r, cy + r)
    black = (0, 0, 0, 255)
    if shape == "circle":
        d.ellipse(box, fill=black)
    elif shape == "square":
        d.rectangle(box, fill=black)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=black)
    else:
        d.line([(cx - r, cy - r), (cx + r, cy + r)], fill=black, width=6)
        d.line([(cx - r, cy + r), (cx + r, cy - r)], fill=black, width=6)
    return img if transparent else img.convert("RGB")


def truncated_png() -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGBA", (64, 64), random.Random(7).randbytes(64 * 64 * 4)).save(buf, "PNG")
    return buf.getvalue()[: len(buf.getvalue()) * 3 // 5]  # the header reads, the pixels stop short


def icon_folder(root: Path, transparent: bool) -> Path:
    rng = random.Random(0)  # the same icons in both folders
    for split, n in PER_SPLIT.items():
        for shape in SHAPES:
            (root / split / shape).mkdir(parents=True)
            for i in range(n):
                icon(shape, rng, transparent).save(root / split / shape / f"{i}.png")
    return root


def _train(data: Path, out: Path, weights: Path) -> Path:
    cfg = TrainConfig(data=data, output=out, backbone="mobilenet_v2", weights=str(weights), recipe="head",
                      epochs=8, lr=0.01, seed=0, refit=False)  # fmt: skip
    # refit off: the export test compares the served model with the validation metrics, which grade the weights
    # selected on them; a refit's weights trained on those images (training/refit.py)
    fit(cfg)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, mobilenet_weights: Path) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("icons")
    clear = icon_folder(base / "transparent", transparent=True)
    (clear / "train" / "circle" / "broken.png").write_bytes(truncated_png())
    (clear / "val" / "square" / "broken.png").write_bytes(truncated_png())
    white = icon_folder(base / "white", transparent=False)
    return {"transparent": _train(clear, base / "run-t", mobilenet_weights),
            "white": _train(white, base / "run-w", mobilenet_weights)}  # fmt: skip


def test_transparent_icons_train_as_well_as_on_white(runs: dict[str, Path]) -> None:
    clear, white = (read_card(runs[k]).metrics["val_accuracy"] for k in ("transparent", "white"))
    assert clear > 0.9, f"transparent icons reached {clear:.3f}"
    assert clear >= white - 0.05, f"transparent {clear:.3f} vs white {white:.3f}"
    card = read_card(runs["transparent"])
    assert card.preprocessing.background == (255, 255, 255)
    assert card.lineage.num_transparent == card.lineage.num_train + card.lineage.num_val
    assert read_card(runs["white"]).lineage.num_transparent == 0
    assert "with transparency, composited on RGB (255, 255, 255)" in (runs["transparent"] / "train.log").read_text()


def test_truncated_files_are_skipped_by_name_and_counts_are_the_images_used(runs: dict[str, Path]) -> None:
    card = read_card(runs["transparent"])
    skipped = {Path(s["path"]).relative_to(Path(card.lineage.dataset_path or "")): s["reason"]
               for s in card.lineage.skipped}  # fmt: skip
    assert set(skipped) == {Path("train/circle/broken.png"), Path("val/square/broken.png")}
    assert all("truncated" in reason for reason in skipped.values())
    assert card.lineage.num_skipped == 2
    n_train, n_val = PER_SPLIT["train"] * len(SHAPES), PER_SPLIT["val"] * len(SHAPES)
    assert (card.lineage.num_train, card.lineage.num_val) == (n_train, n_val)
    log = (runs["transparent"] / "train.log").read_text()
    assert "train/circle/broken.png: image data is truncated" in log
    assert f"data: {n_train} train / {n_val} val images used" in log


def test_export_works_and_the_handler_predicts_what_training_evaluated(
    runs: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from training.evaluate import predict_probabilities
    from training.export import export_run

    run = runs["transparent"]
    mar = export_run(run, tmp_path / "store", "icons", "1", model_config={"backend": "onnx"})
    onnx_check = json.loads((run / "model.json").read_text())["export"]["onnx"]
    assert onnx_check["real_images"] and onnx_check["images"] == 16
    assert "broken.png" not in caplog.text, "the export decoded a file training had already skipped"
    card = read_card(run)
    root = Path(card.lineage.dataset_path or "")
    val = sorted(p for p in (root / "val").rglob("*.png") if p.name != "broken.png")
    probs, labels = predict_probabilities(run, val)
    handler = LocalHandler(unpack_mar(mar, tmp_path / "mar"))
    out = handler.predict([{"body": p.read_bytes()} for p in val])
    assert [r.status for r in out] == [200] * len(val)
    for r, row in zip(out, probs, strict=True):
        best = max(range(len(row)), key=row.__getitem__)
        assert r.body["predictions"][0]["label"] == labels[best]
        assert r.body["predictions"][0]["score"] == pytest.approx(row[best], abs=1e-4)
    right = sum(labels[max(range(len(row)), key=row.__getitem__)] == p.parent.name for row, p in zip(probs, val,
                                                                                                      strict=True))
    assert right / len(val) == pytest.approx(card.metrics["val_accuracy"])
