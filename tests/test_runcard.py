"""The run card: one typed reader for every card on disk (old and new), provenance, replay with --config."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import pytest

from celeba.cli import _replay
from celeba.config import REPO_ROOT, TrainConfig, parse_config
from celeba.data import SAMPLE_DIR
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
    assert replayed.to_json() == {**card.config, "resume": False}
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
