"""The training configuration is one typed object: ``graft train``'s flags come from its fields, ``--config``
reads the same fields from a file, and no parser accepts an abbreviation of a flag."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from graft.cli import build_parser
from graft.core.errors import ConfigInvalidError
from training.cli import config_from_args
from training.config import PATH_FIELDS, TrainConfig, recipe_fields


def parse(*argv: str) -> TrainConfig:
    args = build_parser().parse_args(["train", *argv])
    config: TrainConfig = config_from_args(args)
    return config


def test_every_field_has_a_flag_and_every_flag_a_field() -> None:
    train = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    dests = {a.dest for a in train._actions if a.option_strings} - {"help", "config"}
    assert dests == set(TrainConfig.model_fields)


def test_flags_of_every_kind_reach_the_config(tmp_path: Path) -> None:
    cfg = parse("--data", "d", "-o", "out", "--momentum", "0.8", "--no-amp", "--no-channels-last", "--augment",
                "--no-feature-cache", "--schedule", "onecycle", "--trainable-stages", "2",
                "--max-per-class", "5")  # fmt: skip
    flags = (cfg.momentum, cfg.amp, cfg.channels_last, cfg.augment, cfg.feature_cache)
    assert flags == (0.8, False, False, True, False)
    assert (cfg.schedule, cfg.trainable_stages, cfg.max_per_class, cfg.output) == ("onecycle", 2, 5, Path("out"))
    with pytest.raises(SystemExit):
        parse("--data", "d", "-o", "out", "--schedule", "sometimes")


def test_config_file_and_flags_on_top(tmp_path: Path) -> None:
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"manifest": "m.json", "output": "o", "epochs": 3, "lr": 0.01}))
    cfg = parse("--config", str(file), "--epochs", "7")
    assert (cfg.manifest, cfg.epochs, cfg.lr) == (Path("m.json"), 7, 0.01)
    assert cfg.model_fields_set >= {"manifest", "output", "epochs", "lr"}
    file.write_text(json.dumps({"manifest": "m.json", "output": "o", "learning_rate": 0.01}))
    with pytest.raises(ConfigInvalidError, match="learning_rate"):
        parse("--config", str(file))
    with pytest.raises(ConfigInvalidError, match="exactly one of data"):
        parse("-o", "x")


def test_no_parser_accepts_an_abbreviated_flag() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "d", "--outp", "x"])

    def walk(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
        out = [parser]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    out += walk(sub)
        return out

    parsers = walk(build_parser())
    assert len(parsers) >= 6 and all(not p.allow_abbrev for p in parsers), [p.prog for p in parsers if p.allow_abbrev]


def test_the_recipe_in_model_json_leaves_out_paths_and_records_explicit_choices() -> None:
    cfg = TrainConfig(data=Path("/data"), output=Path("/out"), init_from=Path("/run"), lr=0.01, device="cpu")
    recipe = cfg.card_recipe()
    assert not {"data", "manifest", "output", "init_from"} & set(recipe)
    assert recipe["explicit"] == ["lr"] and recipe["weights"] == "imagenet"
    assert not PATH_FIELDS & set(recipe_fields()) and "device" not in recipe_fields()
