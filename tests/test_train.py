"""Training end to end on the sample: run card, phases, resume after an interruption, atomic saves."""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest
from roundtrip import assert_round_trip

from celeba.checkpoint import save_atomic
from celeba.config import TrainConfig
from celeba.data import SAMPLE_DIR, labels_array, load_index, split
from celeba.distribution import distribution_strategy, set_precision
from celeba.losses import class_balanced_weights
from celeba.model import build_model, load_model
from celeba.train import Phase, compile_for, plan_phases, train, with_augmentation


def test_tiny_model_run_card(tiny_model):
    card = json.loads(tiny_model.with_suffix(".json").read_text())
    assert card["config"]["labels"] == ["Male", "Young"]
    assert (card["data"]["train"], card["data"]["validation"]) == (32, 32)
    rates = labels_array(split(load_index(SAMPLE_DIR), "train", 32), ["Male", "Young"]).mean(axis=0)
    assert list(card["data"]["train_positive_rate"].values()) == pytest.approx(rates, abs=1e-4)
    assert card["epochs_trained"] == 1 and card["train_images_per_s"] > 0 and card["time_s"] > 0
    assert set(card["validation_metrics"]) == {"Male", "Young"}
    model, labels = load_model(tiny_model)
    assert labels == ("Male", "Young") and model.output_shape == (None, 2)
    history = list(csv.DictReader((tiny_model.parent / "tiny" / "history.csv").open()))
    assert [row["epoch"] for row in history] == ["0"] and "val_loss" in history[0]


def test_phases():
    assert [(p.name, p.epochs) for p in plan_phases(TrainConfig(weights="none", epochs=4))] == [("full", 4)]
    phases = plan_phases(TrainConfig(weights="imagenet", epochs=5, freeze_epochs=2, learning_rate=1e-3))
    assert [(p.name, p.epochs, p.backbone_trainable) for p in phases] == [("head", 2, False), ("finetune", 3, True)]
    assert phases[1].learning_rate == pytest.approx(1e-4)
    assert [p.name for p in plan_phases(TrainConfig(weights="x.h5", epochs=1, freeze_epochs=1))] == ["head"]
    assert phases[1].unfreeze is None  # the whole backbone by default
    tuned = plan_phases(
        TrainConfig(weights="x.h5", epochs=3, freeze_epochs=1, finetune_learning_rate=3e-5, unfreeze=40)
    )
    assert (tuned[1].learning_rate, tuned[1].unfreeze) == (3e-5, 40)
    assert tuned[0].unfreeze is None  # the head phase freezes the whole backbone whatever --unfreeze says


def test_schedules_peak_where_they_say():
    from celeba.train import learning_rate_schedule

    cosine = learning_rate_schedule("cosine", 1e-3, 100)
    one_cycle = learning_rate_schedule("one-cycle", 1e-3, 100)
    at = lambda schedule, step: float(schedule(step))  # noqa: E731
    assert at(cosine, 0) == pytest.approx(1e-3) and at(cosine, 100) == pytest.approx(1e-5)
    assert at(one_cycle, 0) == pytest.approx(1e-3 / 25)  # starts low
    assert at(one_cycle, 30) == pytest.approx(1e-3, rel=1e-3)  # the peak after 30% of the steps
    assert at(one_cycle, 15) < at(one_cycle, 30) > at(one_cycle, 60) > at(one_cycle, 90)
    assert at(one_cycle, 100) == pytest.approx(1e-5, rel=1e-3)  # both end at 1% of the peak


def test_the_projects_losses_metrics_and_augmentation_train_in_a_traced_step():
    """The suite's MobileNetV2 trainings run eagerly (they start in seconds); a real one traces its step into a
    graph. This runs the project's pieces of that step (each loss, the metrics, the schedule, the augmentation
    wrapper, via `compile_for`) traced, on a small conv net: what fails only in graph mode fails here."""
    import tensorflow as tf

    from celeba.losses import make_loss
    from celeba.train import Phase, compile_for

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 2, (16, 2)).astype(np.float32)
    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="sigmoid", name="predictions")(pooled))
    for name in ("bce", "weighted-bce", "focal"):
        loss, eager = make_loss(name, y), []

        def probed(y_true, y_pred, loss=loss, eager=eager):  # the project's loss, noting where it runs
            eager.append(tf.executing_eagerly())
            return loss(y_true, y_pred)

        trainer = with_augmentation(model, seed=0)
        compile_for(model, Phase("full", 1, 1e-3, True, False), probed, steps=2, trainer=trainer)
        logs = trainer.fit(x, y, batch_size=8, epochs=1, verbose=0).history
        assert eager and not any(eager), name  # traced into a graph, never run eagerly
        assert np.isfinite(logs["loss"][0]) and 0 <= logs["accuracy"][0] <= 1 and 0 <= logs["auc"][0] <= 1


def test_cpu_defaults_are_no_ops():
    assert set_precision(True) == "float32"  # no GPU here: mixed precision is ignored, not broken
    assert distribution_strategy().num_replicas_in_sync == 1


class Interrupt(keras.callbacks.Callback):
    """Simulates a killed run: stops hard after the first epoch of the fine-tuning phase."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


@pytest.mark.slow  # two trainings, one interrupted
def test_weighted_run_resumes_after_interruption(tmp_path):
    source = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None)
    weights = tmp_path / "backbone.weights.h5"
    source.save_weights(weights)  # a local pretrained file gives the two-phase schedule, offline
    cfg = TrainConfig(
        weights=str(weights),
        loss="weighted-bce",
        image_size=32,
        epochs=3,
        freeze_epochs=1,
        limit=16,
        batch_size=16,  # one step per epoch: the resume logic counts epochs, not steps
        models_dir=tmp_path / "models",
        name="run",
        check_images=False,
        run_eagerly=True,  # the resume logic is the same traced or eager; eager skips two traces per run
    )
    with pytest.raises(KeyboardInterrupt):
        train(cfg, extra_callbacks=[Interrupt()])
    model_path = cfg.models_dir / "run.keras"
    assert not model_path.exists()  # no half-written or premature final model
    assert (cfg.models_dir / "run" / "phase-head.weights.h5").is_file()

    card = train(TrainConfig(**{**cfg.__dict__, "resume": True}))
    epochs = [row["epoch"] for row in csv.DictReader((cfg.models_dir / "run" / "history.csv").open())]
    assert epochs == ["0", "1", "2"]  # epoch 1 was backed up before the interruption and not repeated
    assert card.epochs_trained == 3 and model_path.is_file()  # every epoch of the run, before and after the resume

    rows = split(load_index(SAMPLE_DIR), "train", 16)
    pos, neg = class_balanced_weights(labels_array(rows, cfg.labels))
    assert card.class_weights["Male"] == {"positive": pos[0], "negative": neg[0]}
    model, _ = load_model(model_path)
    assert model.loss.pos_weights == pos


def test_save_atomic_keeps_the_old_file_when_saving_fails(tmp_path, monkeypatch):
    model = build_model(1, 32, "none")
    path = tmp_path / "m.keras"
    save_atomic(model, path)
    before = path.read_bytes()

    def broken_save(self, filepath, *args, **kwargs):
        open(filepath, "wb").write(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic(model, path)
    assert path.read_bytes() == before
    assert np.allclose(
        keras.models.load_model(path).predict(np.zeros((1, 32, 32, 3)), verbose=0),
        model.predict(np.zeros((1, 32, 32, 3)), verbose=0),
    )


def test_a_saved_model_round_trips_with_its_labels(tmp_path):
    """What train writes (save_atomic with the labels inside the .keras file) loads back predicting the same."""
    model = build_model(2, 32, "none")
    save_atomic(model, tmp_path / "m.keras", ["Male", "Young"])
    assert_round_trip(tmp_path / "m.keras", model, labels=["Male", "Young"])


def test_the_trained_tiny_model_round_trips(tiny_model):
    """train's own file: reloaded twice, the same probabilities, the labels of its run card."""
    model, labels = load_model(tiny_model)
    assert_round_trip(tiny_model, model, labels=labels)


def test_weights_file_loads_and_head_phase_leaves_the_backbone_unchanged(tmp_path):
    keras.utils.set_random_seed(123)  # other values than the model's own initialisation below
    source = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None)
    keras.utils.set_random_seed(0)
    weights = tmp_path / "backbone.weights.h5"
    source.save_weights(weights)
    model = build_model(2, 32, str(weights))
    conv = model.get_layer("Conv1").get_weights()[0]
    np.testing.assert_allclose(conv, source.get_layer("Conv1").get_weights()[0])  # --weights PATH was loaded

    backbone_before = [
        w.copy()
        for layer in model.layers
        if layer.name not in ("head_dense", "head_bn", "predictions")
        for w in layer.get_weights()
    ]
    head_before = [w.copy() for w in model.get_layer("predictions").get_weights()]
    trainer = with_augmentation(model, seed=0)
    compile_for(model, Phase("head", 1, 1e-2, False, True), keras.losses.BinaryCrossentropy(), 4, trainer)
    x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype(np.float32)
    y = (np.random.default_rng(1).uniform(size=(16, 2)) > 0.5).astype(np.float32)
    trainer.fit(x, y, batch_size=4, epochs=1, verbose=0)
    backbone_after = [
        w
        for layer in model.layers
        if layer.name not in ("head_dense", "head_bn", "predictions")
        for w in layer.get_weights()
    ]
    assert all(np.array_equal(a, b) for a, b in zip(backbone_before, backbone_after))  # BatchNorm stats too
    head_after = model.get_layer("predictions").get_weights()
    assert not all(np.allclose(a, b) for a, b in zip(head_before, head_after))  # the head did learn


def test_augmentation_wrapper_is_inactive_at_inference_and_never_saved(tiny_model):
    model, _ = load_model(tiny_model)
    assert not any("augment" in layer.name for layer in model.layers)  # the saved model has no augmentation
    trainer = with_augmentation(model, seed=0)
    x = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(trainer(x, training=False), model(x, training=False), atol=1e-6)
    assert not np.allclose(trainer.layers[0](x, training=True), x)  # ...and active in training


def test_run_card_reports_images_per_second_by_phase(tiny_model):
    card = json.loads(tiny_model.with_suffix(".json").read_text())
    assert set(card["train_images_per_s_by_phase"]) == {"full"}  # --weights none: one phase
    assert card["train_images_per_s_by_phase"]["full"] > 0
