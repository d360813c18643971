"""Flags are generated from the config dataclass, so every field is overridable and typed."""

from __future__ import annotations

from pathlib import Path

import pytest

from celeba.config import EvalConfig, TrainConfig, parse_config


def test_defaults_run_on_the_embedded_sample():
    cfg = parse_config(TrainConfig, [])
    assert cfg == TrainConfig() and cfg.data_dir.name == "celeba-sample" and cfg.weights == "imagenet"
    assert cfg.run_name == "mobilenetv2-bce"


def test_flags_override_with_types():
    cfg = parse_config(TrainConfig, ["--epochs", "7", "--labels", "Male", "Smiling", "--no-augment",
                                     "--loss", "weighted-bce", "--limit", "50", "--data-dir", "/x", "--learning-rate", "3e-4"])
    assert cfg.epochs == 7 and cfg.labels == ("Male", "Smiling") and cfg.augment is False
    assert cfg.loss == "weighted-bce" and cfg.run_name == "mobilenetv2-weighted-bce"
    assert cfg.limit == 50 and cfg.data_dir == Path("/x") and cfg.learning_rate == 3e-4
    assert cfg.partition_limit("train") == 50
    assert parse_config(TrainConfig, ["--limit", "5", "--train-limit", "9"]).partition_limit("train") == 9


def test_bad_choice_is_rejected(capsys):
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, ["--loss", "focal"])
    assert "invalid choice: 'focal'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(EvalConfig, ["--partition", "dev"])


def test_help_comes_from_the_field_comments(capsys):
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, ["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--resume, --no-resume continue an interrupted run from its last epoch" in text
    assert "--loss {bce,weighted-bce}" in text
