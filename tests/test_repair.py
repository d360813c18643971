"""Group robustness: on data with a planted spurious feature, plain training fails the minority groups and DFR and
Group DRO do not; `celeba repair` end to end, its repaired model round-tripping through predict, serve and export."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import requests
from conftest import loopback_server
from roundtrip import assert_round_trip

from celeba.callbacks import group_keys, worst_group_accuracy
from celeba.config import REPO_ROOT, ConfigError
from celeba.data import CelebADataError
from celeba.flags import parse_config
from celeba.losses import make_loss
from celeba.repair import RepairConfig, balanced_draw, fit_layer, repair


def planted(n: int, agree: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, [y, s], group): a weak core feature of y, a strong spurious one of s; s == y in `agree` of rows."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.where(rng.random(n) < agree, y, 1 - y)
    x = np.stack([y + rng.normal(0, 0.4, n), s + rng.normal(0, 0.05, n)], axis=1).astype(np.float32)
    labels = np.stack([y, s], axis=1).astype(np.float32)
    return x, labels, group_keys(labels, [0, 1])


TRAIN = planted(4000, 0.97, 0)
TEST = planted(4000, 0.5, 1)  # every group equally often: the minority groups count


def _worst(probs: np.ndarray) -> float:
    x, labels, keys = TEST
    return worst_group_accuracy(labels[:, :1], probs[:, :1], keys)[0]


def test_plain_fit_fails_the_minority_groups_and_dfr_does_not():
    x, labels, keys = TRAIN
    test_x = TEST[0]
    for balance, low, high in ((False, 0.0, 0.6), (True, 0.8, 1.0)):
        w, b = fit_layer(x, labels[:, 0], keys, strength=1.0, draws=5, balance=balance, seed=0)
        worst = _worst((1 / (1 + np.exp(-(test_x @ w + b))))[:, None])
        assert low <= worst <= high, (balance, worst)


def _linear_model(loss) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=loss, run_eagerly=True)
    x, labels, _ = TRAIN
    model.fit(x, labels, batch_size=256, epochs=30, verbose=0)
    return model


def test_group_dro_lifts_the_worst_group_that_plain_bce_fails():
    x, labels, _ = TRAIN
    plain = _worst(_linear_model(make_loss("bce")).predict(TEST[0], verbose=0))
    dro = _worst(
        _linear_model(make_loss("group-dro", labels, group_labels=[0, 1], dro_step=0.1)).predict(TEST[0], verbose=0)
    )
    assert plain < 0.6 and dro > 0.8 and dro > plain + 0.3, (plain, dro)


def test_balanced_draws_take_the_smallest_group_size():
    groups = np.array(["a"] * 50 + ["b"] * 7 + ["c"] * 20)
    rows = balanced_draw(groups, np.random.default_rng(0))
    assert len(rows) == 21 and len(set(rows)) == 21
    assert {g: int((groups[rows] == g).sum()) for g in "abc"} == {"a": 7, "b": 7, "c": 7}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["a.keras", "b.keras"], "one model at a time"),
        (["--groups", "Male,,Young"], "separated by commas"),
        (["--strengths", "0"], "--strengths"),
        (["--images", "x", "--labels-csv", "l.csv", "--split-file", "s.csv", "--parts", "evaluation"], "never for"),
        (["--images", "x"], "exactly one of"),
    ],
)
def test_bad_repair_flags_are_clear(argv, message):
    with pytest.raises((ConfigError, CelebADataError), match=message):
        parse_config(RepairConfig, argv)


def test_a_group_column_the_data_lacks_is_a_clear_error(tiny_model, tmp_path):
    cfg = RepairConfig(model=(tiny_model,), groups=("Male,skin_tone",), models_dir=tmp_path)
    with pytest.raises(CelebADataError, match="no column 'skin_tone'"):
        repair(cfg)


@pytest.mark.slow  # a repair, then predict, a server and an ONNX export of its result
def test_repaired_model_round_trips_through_predict_serve_and_export(tiny_model, tmp_path):
    from celeba.export import ExportConfig, export
    from celeba.model import load_model
    from celeba.predict import Predictor
    from celeba.runcard import RunCard
    from celeba.serve import create_app

    photos = REPO_ROOT / "data" / "photos-sample"
    cfg = RepairConfig(
        model=(tiny_model,),
        images=photos / "images",
        labels_csv=photos / "labels.csv",
        derive=("Young=age<30",),
        split_file=photos / "split.csv",
        groups=("race,gender",),
        labels=("Male",),
        draws=2,
        crops_dir=tmp_path / "crops",
        models_dir=tmp_path,
    )
    result = repair(cfg)
    # Weights only, like a trained model's file: no optimizer state (which would triple the size).
    assert result.model.stat().st_size < 1.2 * tiny_model.stat().st_size
    card = RunCard.load(result.model)
    assert card.extra["repair"]["groups"] == ["race", "gender"]
    assert str(photos / "images") in card.extra["repair"]["data"] and card.labels == ("Male", "Young")
    repaired, labels = load_model(result.model)
    original, _ = load_model(tiny_model)
    new_w, old_w = (m.get_layer("predictions").get_weights()[0] for m in (repaired, original))
    assert not np.allclose(new_w[:, 0], old_w[:, 0]) and np.allclose(new_w[:, 1], old_w[:, 1])  # Male only
    # The file is the original network with the refitted head, nothing else changed: round trip against that.
    original.get_layer("predictions").set_weights(repaired.get_layer("predictions").get_weights())
    assert_round_trip(result.model, original, labels=("Male", "Young"))
    photo = sorted((photos / "images").glob("*.jpg"))[0]
    predictor = Predictor(result.model)
    with loopback_server(create_app(predictor)) as url:
        with open(photo, "rb") as f:
            answer = requests.post(f"{url}/predict", files={"file": (photo.name, f, "image/jpeg")}, timeout=60)
    assert answer.status_code == 200 and answer.json()["faces"], answer.text
    served = answer.json()["faces"][0]["probabilities"]["Male"]
    onnx = export(ExportConfig(model=result.model, format=("onnx",), parity_limit=16))[0]
    assert_round_trip(onnx.model, repaired, labels=("Male", "Young"), atol=1e-4)
    assert onnx.parity["passed"] and json.loads(result.card.read_text())["repair"]["labels"] == ["Male"]
    with loopback_server(create_app(Predictor(onnx.model))) as url:
        with open(photo, "rb") as f:
            again = requests.post(f"{url}/predict", files={"file": (photo.name, f, "image/jpeg")}, timeout=60)
    assert again.json()["faces"][0]["probabilities"]["Male"] == pytest.approx(served, abs=1e-3)
    direct = predictor.probabilities([predictor.crops(np.asarray(__import__("PIL.Image").Image.open(photo)))[0].crop])
    assert direct[0, 0] == pytest.approx(served, abs=1e-3)
