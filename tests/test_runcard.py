"""The run card: one typed reader for every card on disk (old and new), provenance, replay with --config."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from celeba.cli import _replay, train_main
from celeba.config import REPO_ROOT, TrainConfig
from celeba.data import SAMPLE_DIR
from celeba.flags import parse_config
from celeba.runcard import RunCard, RunCardError, card_path

COMMITTED = sorted((REPO_ROOT / "models").glob("*.json"))


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_committed_cards_load_and_round_trip(path, tmp_path):
    raw = json.loads(path.read_text())
    card = RunCard.load(path)
    assert card.labels == tuple(raw["config"]["labels"]) and card.image_size == raw["config"]["image_size"]
    saved = card.save(tmp_path / path.name)
    assert json.loads(saved.read_text()) == raw  # nothing lost or added, old training cards and export cards alike
    if "epochs_trained" not in raw:  # an export's card: labels and size for the exported file, parity
        assert card.extra["source_model"] and card.epochs_trained is None
        return
    assert set(card.roc_auc()) == set(card.labels) and card.quality_warning() is None  # real models, not coins
    cfg = card.train_config()
    assert isinstance(cfg, TrainConfig) and cfg.labels == card.labels and cfg.epochs == raw["config"]["epochs"]


def test_training_writes_provenance(tiny_model):
    card = RunCard.load(tiny_model)
    assert card.provenance["data_dir"] == str(SAMPLE_DIR) and Path(card.provenance["data_dir"]).is_absolute()
    sha = hashlib.sha256((SAMPLE_DIR / "list_attr_celeba.txt").read_bytes()).hexdigest()
    assert card.provenance["annotations_sha256"]["list_attr_celeba.txt"] == sha
    if (REPO_ROOT / ".git").exists():  # a git checkout (a source tarball has none)
        assert len(card.provenance["git_commit"]) == 40 and isinstance(card.provenance["git_dirty"], bool)
    assert card.train_images_per_s_by_phase and card.environment["tensorflow"]


def test_replay_takes_every_value_from_the_card_and_flags_still_override(tiny_model):
    card = RunCard.load(tiny_model)
    replayed = parse_config(TrainConfig, ["--config", str(card_path(tiny_model))], load_base=_replay)
    assert replayed.to_json() == {**card.config, "resume": False, "name": "tiny-replay"}  # never the run it replays
    changed = parse_config(
        TrainConfig, ["--config", str(card_path(tiny_model)), "--epochs", "5", "--labels", "Bald"], load_base=_replay
    )
    assert changed == dataclasses.replace(replayed, epochs=5, labels=("Bald",))


def test_old_config_keys_are_ignored_with_a_warning(tmp_path, caplog):
    card = RunCard(model="m.keras", config={**TrainConfig().to_json(), "old_flag": 1})
    with caplog.at_level(logging.WARNING):
        assert card.train_config() == TrainConfig()
    assert "old_flag" in caplog.text


def test_a_chance_level_model_warns_when_loaded(tiny_model, tmp_path, caplog):
    from celeba.model import load_model

    card = RunCard.load(tiny_model)
    card.validation_metrics = {"Male": {"roc_auc": 0.51}, "Young": {"roc_auc": 0.39}}
    copy = tmp_path / "coin.keras"
    copy.write_bytes(tiny_model.read_bytes())
    card.save(copy)
    assert "Male 0.51, Young 0.39 is near chance" in card.quality_warning()
    with caplog.at_level(logging.WARNING):
        load_model(copy)
    assert "near chance" in caplog.text


def test_unreadable_cards_name_the_file(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text("{not json")
    with pytest.raises(RunCardError, match="m.json: unreadable run card"):
        RunCard.load(bad)
    bad.write_text(json.dumps({"model": "m.keras"}))
    with pytest.raises(RunCardError, match="no config.labels"):
        RunCard.load(bad)
    with pytest.raises(FileNotFoundError, match="run card not found"):
        RunCard.load(tmp_path / "none.keras")


def test_save_is_atomic(tmp_path, monkeypatch):
    card = RunCard(model="m.keras", config={"labels": ["Male"]}, extra={"parity": {"passed": True}})
    path = card.save(tmp_path / "m.keras")
    assert path == tmp_path / "m.json" and json.loads(path.read_text())["parity"] == {"passed": True}

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", broken)
    with pytest.raises(OSError):
        RunCard(model="m.keras", config={"labels": ["Young"]}).save(path)
    assert json.loads(path.read_text())["config"]["labels"] == ["Male"]  # the old card is intact
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # and no temporary file is left beside it


def _celeba(*args: str) -> subprocess.CompletedProcess:
    """`python -m celeba ...` in a fresh process, TF_CPP_MIN_LOG_LEVEL unset as in a user's shell."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-m", "celeba", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_replay_starts_quietly_and_says_its_new_name(tiny_model):
    """A card with provenance has its data folder checked through tf.io.gfile while the flags are parsed, before
    the command's own quiet start: that used to print TensorFlow's CUDA lines, `cuInit` included."""
    result = _celeba("train", "--config", str(card_path(tiny_model)), "--help")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and "(default: tiny-replay)" in result.stdout


def test_a_replay_never_writes_the_card_it_reads(tiny_model, capsys):
    before = card_path(tiny_model).read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--config", str(card_path(tiny_model)), "--name", "tiny"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: --name tiny: the replay would overwrite the run card it replays ({card_path(tiny_model)}); "
        "leave --name out (it writes tiny-replay) or pick another"
    ]
    assert card_path(tiny_model).read_bytes() == before


def test_replaying_a_card_in_its_own_folder_writes_a_new_model_beside_it(tiny_model, tmp_path, capsys):
    """docs/training.md's example, `celeba train --config models/<name>.json`, on a tiny run."""
    card = json.loads(card_path(tiny_model).read_text())
    card["config"] |= {"models_dir": str(tmp_path), "limit": 8, "batch_size": 8}
    replayed = tmp_path / "tiny.json"
    replayed.write_text(json.dumps(card))
    (tmp_path / "tiny.keras").write_bytes(tiny_model.read_bytes())
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--config", str(replayed)])
    assert exit_info.value.code == 0, capsys.readouterr().err
    assert f"saved {tmp_path / 'tiny-replay.keras'}" in capsys.readouterr().out
    assert (
        json.loads(replayed.read_text()) == card and (tmp_path / "tiny.keras").read_bytes() == tiny_model.read_bytes()
    )
    assert RunCard.load(tmp_path / "tiny-replay.json").config["name"] == "tiny-replay"


def _card_of(tmp_path: Path, models: Path, **config) -> Path:
    """A training card replaying a one-epoch run named `x` (it writes `x-replay` in `models`), with `config` set."""
    card = json.loads((REPO_ROOT / "models" / "celeba8k-bce.json").read_text())
    card.get("provenance", {}).pop("data_dir", None)
    card["config"].update(name="x", models_dir=str(models), data_dir=str(SAMPLE_DIR), weights="none", limit=8)
    card["config"].update({"image_size": 32, "epochs": 1, "check_images": False, "run_eagerly": True, **config})
    path = tmp_path / "x.json"
    path.write_text(json.dumps(card))
    return path


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"image_size": "96"}, "config.image_size: '96' is not an integer"),
        ({"loss": "hinge"}, "config.loss: 'hinge' is not one of 'bce', 'weighted-bce', 'focal', 'group-dro'"),
        ({"augment": "yes"}, "config.augment: 'yes' is not a true/false"),
        ({"dropout": None}, "config.dropout: None is not a number"),
    ],
)
def test_a_tampered_card_is_refused_naming_the_card_and_the_field(tmp_path, change, why):
    card = _card_of(tmp_path, tmp_path / "models", **change)
    with pytest.raises(RunCardError) as caught:
        _replay(card)
    assert str(caught.value) == f"{card}: cannot replay this run card: {why}"


def test_a_card_that_is_a_json_list_is_refused_naming_the_card(tmp_path):
    card = tmp_path / "x.json"
    card.write_text("[1, 2]")
    with pytest.raises(
        RunCardError, match=r"x.json: unreadable run card \(not a run card: a JSON list, not an object\)"
    ):
        _replay(card)


@pytest.mark.slow
def test_a_bad_replay_deletes_nothing_and_says_one_line(tmp_path):
    """`train --config` with an unknown loss used to log `fresh run: clearing <models>/<name>`, delete the earlier
    run of that name, and only then fail with a traceback."""
    models = tmp_path / "models"
    (models / "x-replay").mkdir(parents=True)
    (models / "x-replay" / "history.csv").write_text("epoch,loss\n0,1.0\n")  # the earlier run's files
    result = _celeba("train", "--config", str(_card_of(tmp_path, models, loss="hinge")))
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'x.json'}: cannot replay this run card: config.loss: 'hinge' is not one of "
        "'bce', 'weighted-bce', 'focal', 'group-dro'"
    ]
    assert (models / "x-replay" / "history.csv").read_text() == "epoch,loss\n0,1.0\n"


def test_a_run_that_fails_to_start_keeps_the_earlier_run_of_its_name(tmp_path):
    """Data, model and loss are made before the earlier run folder is cleared: a weights file that is not there
    (found only when the model is built, after the data is read) leaves it as it was."""
    from conftest import tiny_config

    from celeba.model import WeightsError
    from celeba.train import train

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "history.csv").write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(WeightsError, match="missing.h5: weights file not found"):
        train(tiny_config(tmp_path, "r", weights=str(tmp_path / "missing.h5"), image_size=32, limit=8))
    assert (tmp_path / "r" / "history.csv").read_text() == "epoch,loss\n0,1.0\n"


@pytest.mark.parametrize(
    ("labels", "why"),
    [
        ("MY", "config.labels must be a list of CelebA attribute names, got 'MY'"),
        (["M", "Y"], "config.labels: ['M', 'Y'] are not CelebA attributes"),
        ([], "config.labels must be a list of CelebA attribute names, got []"),
    ],
)
def test_the_labels_of_a_card_are_celeba_attributes(tmp_path, labels, why):
    """An older model takes its labels from its card: "MY" used to load as the labels M and Y."""
    card = tmp_path / "old.json"
    card.write_text(json.dumps({"model": "old.keras", "config": {"labels": labels}}))
    with pytest.raises(RunCardError) as caught:
        RunCard.load(tmp_path / "old.keras")
    assert str(caught.value).startswith(f"{card}: unreadable run card ({why}")
