"""``graft check``: a folder made to hold every problem gets every finding, as text and JSON; layouts that
cannot train are refused with the fix, by ``graft check`` and ``graft train`` alike."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from graft.cli import main
from graft.core.errors import DatasetError
from tests.support.images import encode, photo, write
from training.check import check_data
from training.config import TrainConfig
from training.labels import look_alike
from training.start import load_data


def _photos(folder: Path, n: int, seed: int) -> list[Path]:
    return [write(folder / f"{i}.png", photo(seed + i)) for i in range(n)]


def _truncated_png() -> bytes:
    data = encode(Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48), "PNG")
    return data[: len(data) // 2]


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ + val/ with one of each problem graft check looks for."""
    root = tmp_path_factory.mktemp("messy")
    train, val = root / "train", root / "val"
    cats = _photos(train / "cat", 40, 0)
    _photos(val / "cat", 4, 100)
    _photos(train / "Cat", 2, 200)  # small, 20:1 imbalance, and 'cat' spelled differently
    _photos(val / "Cat", 1, 210)
    _photos(train / "zebra", 6, 300)  # no val/zebra: unmeasured
    _photos(train / "zebras", 6, 400)  # a typo of zebra?
    _photos(val / "zebras", 2, 450)
    _photos(val / "ghost", 2, 500)  # validation images of a class nothing trains on: an error
    write(train / "cat" / "broken.png", _truncated_png())
    shutil.copy(cats[0], val / "cat" / "copy.png")  # exact duplicate across splits
    write(train / "zebra" / "near.jpg", photo(1, fmt="JPEG", quality=80))  # cat 1 re-encoded, labelled zebra
    icon = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    icon.paste((0, 0, 0, 255), (16, 16, 48, 48))
    icon.save(train / "zebras" / "icon.png")  # transparency
    Image.new("RGBA", (64, 64), (255, 255, 255, 0)).save(train / "zebras" / "empty.png")  # blank once composited
    Image.frombytes("RGB", (16, 16), bytes(range(256)) * 3).save(train / "zebras" / "tiny.png")
    Image.frombytes("RGB", (400, 100), bytes(range(200)) * 600).save(train / "zebras" / "banner.png")
    Image.open(io.BytesIO(photo(700))).convert("CMYK").save(train / "zebras" / "print.jpg")
    write(train / "stray.png", photo(900))  # outside any class folder
    _photos(root / "test" / "cat", 1, 950)  # a folder graft does not read
    return root


EXPECTED = {
    "no_train_images": "error", "unreadable": "warning", "loose_images": "warning", "unread_folders": "info",
    "no_val_for_class": "warning", "small_class": "warning", "imbalance": "warning", "label_lookalike": "warning",
    "transparency": "info", "blank": "warning", "tiny": "warning", "elongated": "warning", "odd_mode": "warning",
    "duplicate": "warning", "near_duplicate": "warning",
}  # fmt: skip


def test_every_problem_is_reported_with_where_and_what_to_do(messy: Path) -> None:
    report = check_data(messy)
    found = {f.code: f for f in report.findings}
    assert {code: found[code].severity for code in EXPECTED if code in found} == EXPECTED
    assert "'ghost'" in found["no_train_images"].message and "add training images" in found["no_train_images"].message
    assert found["unreadable"].details == [
        {"path": str((messy / "train/cat/broken.png").resolve()), "reason": found["unreadable"].details[0]["reason"]}
    ]
    assert "truncated" in found["unreadable"].details[0]["reason"]
    assert {tuple(d["labels"]) for d in found["label_lookalike"].details} == {("Cat", "cat"), ("zebra", "zebras")}
    assert found["no_val_for_class"].details[0]["label"] == "zebra"
    assert "'cat' has 40" in found["imbalance"].message and "'Cat' 2" in found["imbalance"].message
    dup = found["duplicate"].details[0]
    assert sorted(dup["splits"]) == ["train", "val"] and "in both train and val" in found["duplicate"].message
    near = found["near_duplicate"].details[0]
    assert sorted(Path(p).name for p in near["paths"]) == ["1.png", "near.jpg"]
    assert set(near["labels"]) == {"cat", "zebra"}
    kinds = ("transparency", "blank", "tiny", "elongated", "odd_mode")
    names = {name: [Path(d["path"]).name for d in found[name].details] for name in kinds}
    assert names == {"transparency": ["empty.png", "icon.png"], "blank": ["empty.png"], "tiny": ["tiny.png"],
                     "elongated": ["banner.png"], "odd_mode": ["print.jpg"]}  # fmt: skip
    assert report.classes["ghost"] == {"train": 0, "val": 2} and report.skipped == 1


def test_cli_prints_text_or_json_and_fails_on_errors(messy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(messy)]) == 1
    text = capsys.readouterr().out
    assert "ERROR   no_train_images" in text and "broken.png: image data is truncated" in text
    assert "graft train would refuse this data" in text
    assert main(["check", str(messy), "--json"]) == 1
    body = json.loads(capsys.readouterr().out)
    assert body["ok"] is False and body["errors"] == 1
    assert {f["code"] for f in body["findings"]} >= set(EXPECTED)
    assert body["classes"]["cat"] == {"train": 40, "val": 5}


def test_clean_data_passes_and_strict_fails_on_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for k, label in enumerate(("ants", "bees")):
        _photos(tmp_path / "d" / label, 10, 1000 * k)
    assert main(["check", str(tmp_path / "d")]) == 0
    assert "no problem found" in capsys.readouterr().out
    _photos(tmp_path / "d" / "wasps", 2, 5000)  # a small class: a warning
    assert main(["check", str(tmp_path / "d")]) == 0
    assert main(["check", str(tmp_path / "d"), "--strict"]) == 1


def test_train_refuses_what_cannot_train_with_the_fix(messy: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"'ghost'.*add training images .*graft check"):
        load_data(TrainConfig(data=messy, output=tmp_path / "run"))


def test_train_skips_and_warns_but_trains_on_what_it_can(messy: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    caplog.set_level(logging.INFO)
    shutil.copytree(messy, tmp_path / "d")
    shutil.rmtree(tmp_path / "d" / "val" / "ghost")
    data = load_data(TrainConfig(data=tmp_path / "d", output=tmp_path / "run"))
    assert [s.path.name for s in data.skipped] == ["broken.png"]
    assert "skipped " in caplog.text and "broken.png: image data is truncated" in caplog.text
    assert "look like one class" in caplog.text and "imbalanced" in caplog.text
    assert f"data: {len(data.train)} train / {len(data.val)} val images used" in caplog.text
    assert data.transparent == 2
    assert "tiny.png" in caplog.text, "a warning names the files it is about"


def test_a_flat_folder_says_where_the_images_go(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _photos(tmp_path / "flat", 6, 0)
    with pytest.raises(DatasetError, match=r"holds 6 image\(s\) directly but no class folders.*DIR/<label>/"):
        load_data(TrainConfig(data=tmp_path / "flat", output=tmp_path / "run"))
    assert main(["check", str(tmp_path / "flat")]) == 1
    assert "directly but no class folders" in capsys.readouterr().out


def test_one_level_too_high_names_the_folder_to_pass(tmp_path: Path) -> None:
    for k, label in enumerate(("ants", "bees")):
        _photos(tmp_path / "top" / "dataset" / label, 3, 100 * k)
    expected = rf"found 1 class \('dataset'\).*ants, bees.*pass --data {tmp_path / 'top' / 'dataset'}"
    with pytest.raises(DatasetError, match=expected):
        load_data(TrainConfig(data=tmp_path / "top", output=tmp_path / "run"))


def test_train_and_test_folders_are_not_taken_for_classes(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for k, label in enumerate(("ants", "bees")):
            _photos(tmp_path / "d" / split / label, 3, 100 * k)
    expected = r"train, test look like splits.*rename test to val, or pass --data .*/d/train to split"
    with pytest.raises(DatasetError, match=expected):
        load_data(TrainConfig(data=tmp_path / "d", output=tmp_path / "run"))


@pytest.mark.parametrize(("labels", "pairs"), [
    (["cat", "Cat", "dog"], [("Cat", "cat")]),
    (["golden retriever", "golden_retriever"], [("golden retriever", "golden_retriever")]),
    (["class_1", "class_2", "car", "dog"], []),  # numbered classes are not typos
    (["ant", "ants", "battery", "baterry"], [("ant", "ants"), ("baterry", "battery")]),
    (["pedestrian", "pedestrain", "bicycle"], [("pedestrain", "pedestrian")]),
])  # fmt: skip
def test_look_alike_labels(labels: list[str], pairs: list[tuple[str, str]]) -> None:
    assert [(a, b) for a, b, _ in look_alike(labels)] == pairs


def test_check_reads_a_few_thousand_images_in_seconds(tmp_path: Path) -> None:
    for k, label in enumerate(("a", "b")):
        for i in range(1000):
            buf = io.BytesIO()
            Image.frombytes("RGB", (8, 8), bytes([(i * 7 + k) % 256] * 192)).resize((128, 96)).save(buf, "JPEG")
            write(tmp_path / "d" / label / f"{i}.jpg", buf.getvalue())
    report = check_data(tmp_path / "d")
    assert report.images == 2000 and report.seconds < 20
