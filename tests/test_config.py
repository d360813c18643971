"""Flags are generated from the config dataclasses: every field is a typed flag with help and a readable default."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from celeba.cli import COMMANDS
from celeba.config import DEFAULT_MODEL, REPO_ROOT, EvalConfig, TrainConfig, resolve_model
from celeba.data import SAMPLE_DIR
from celeba.flags import build_parser, parse_config


def test_defaults_run_on_the_embedded_sample_and_say_so():
    cfg = parse_config(TrainConfig, [])
    assert cfg == TrainConfig() and cfg.data_dir.name == "celeba-sample" and cfg.weights == "imagenet"
    assert cfg.run_name == "smoke-sample-bce"  # a sample run is a smoke test, and its file name says so
    assert TrainConfig(data_dir=Path("/data/celeba")).run_name == "mobilenetv2-bce"


def test_flags_override_with_types():
    cfg = parse_config(
        TrainConfig,
        [
            "--epochs",
            "7",
            "--labels",
            "Male",
            "Smiling",
            "--no-augment",
            "--loss",
            "weighted-bce",
            "--limit",
            "50",
            "--data-dir",
            "/x",
            "--learning-rate",
            "3e-4",
        ],
    )
    assert cfg.epochs == 7 and cfg.labels == ("Male", "Smiling") and cfg.augment is False
    assert cfg.loss == "weighted-bce" and cfg.run_name == "mobilenetv2-weighted-bce"
    assert cfg.limit == 50 and cfg.data_dir == Path("/x") and cfg.learning_rate == 3e-4
    assert cfg.partition_limit("train") == 50
    assert parse_config(TrainConfig, ["--limit", "5", "--train-limit", "9"]).partition_limit("train") == 9


def test_repeated_list_flags_extend_and_replace_the_default():
    """argparse's own action="extend": `--labels A --labels B C` is all three, and none of the defaults."""
    assert parse_config(TrainConfig, ["--labels", "Smiling", "--labels", "Bald", "Male"]).labels == (
        "Smiling",
        "Bald",
        "Male",
    )
    assert parse_config(TrainConfig, ["--labels=Smiling"]).labels == ("Smiling",)


def test_bad_choice_is_rejected(capsys):
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, ["--loss", "hinge"])
    assert "invalid choice: 'hinge'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(EvalConfig, ["--partition", "dev"])


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_has_help_and_a_readable_default(name, capsys):
    cls = COMMANDS[name].config()
    parser = build_parser(cls, prog=name, replay=COMMANDS[name].replay is not None)
    for action in parser._actions:
        assert action.help and action.help.strip(), f"{name} {action.option_strings or action.dest}: no help"
    text = parser.format_help()
    assert "PosixPath" not in text and "(Path" not in text and "None)" not in text
    assert "--paths" not in text  # predict's paths are positional
    for field in dataclasses.fields(cls):
        assert field.metadata.get("help"), f"{cls.__name__}.{field.name}: no help metadata"
        shown = " ".join(text.split())
        if field.default is not None and field.metadata.get("positional") is None:
            assert "(default: " in shown


def test_help_text_comes_from_the_field_metadata(capsys):
    from celeba.cli import train_main

    with pytest.raises(SystemExit):
        train_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--resume, --no-resume continue an interrupted run from its last completed epoch (default: off)" in text
    assert "--loss {bce,weighted-bce,focal,group-dro}" in text and "(default: data/celeba-sample)" in text
    assert "--config RUN_CARD.json" in text


def test_a_field_without_help_is_refused():
    @dataclasses.dataclass
    class Bare:
        x: int = 1

    with pytest.raises(TypeError, match="'x' has no help"):
        build_parser(Bare)


def test_default_model_resolves_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model(DEFAULT_MODEL) == REPO_ROOT / DEFAULT_MODEL and (REPO_ROOT / DEFAULT_MODEL).is_file()
    assert EvalConfig().model == DEFAULT_MODEL
    with pytest.raises(FileNotFoundError, match="nope.keras: model file not found"):
        resolve_model(Path("models/nope.keras"))


def test_sample_dir_is_absolute():
    assert SAMPLE_DIR.is_absolute() and (SAMPLE_DIR / "list_attr_celeba.txt").is_file()
