"""Training: data -> model -> two-phase fit (head, then fine-tune) -> atomically saved model + run card."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from celeba.config import TrainConfig
from celeba.data import CelebADataError, check_labels, labels_array, load_index, make_augmenter, make_dataset, split
from celeba.losses import WeightedBinaryCrossentropy, make_loss
from celeba.model import build_model, set_backbone_trainable, without_optimizer_warnings
from celeba.runcard import RunCard, card_path, provenance
from celeba.runtime import keras_verbose

log = logging.getLogger(__name__)


def save_atomic(model: keras.Model, path: Path) -> None:
    """Write to a temporary file and rename, so an interruption never leaves a half-written model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{''.join(path.suffixes)}")
    if path.name.endswith(".weights.h5"):
        model.save_weights(tmp)
    else:
        model.save(tmp)
    os.replace(tmp, path)


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


class BestCheckpoint(keras.callbacks.Callback):
    """Keep the model with the lowest validation loss across phases, written atomically.

    `target` is the model to save: the bare model, not the training wrapper with its augmentation.
    """

    def __init__(self, path: Path, target: keras.Model, monitor: str = "val_loss"):
        super().__init__()
        self.path, self.target, self.monitor = path, target, monitor
        self.state_path = path.with_suffix(".json")
        self.best = json.loads(self.state_path.read_text())["best"] if self.state_path.is_file() else np.inf

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is not None and value < self.best:
            self.best = float(value)
            save_atomic(self.target, self.path)
            write_json_atomic({"best": self.best, "epoch": epoch}, self.state_path)


class Throughput(keras.callbacks.Callback):
    """Seconds spent in the training batches of each epoch (validation excluded), for images/second."""

    def __init__(self):
        super().__init__()
        self.epoch_seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._train_end = None

    def on_test_begin(self, logs=None):
        self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append((self._train_end or time.perf_counter()) - self._start)


def images_per_s(images_per_epoch: int, epoch_seconds: Sequence[float]) -> float:
    return round(images_per_epoch * len(epoch_seconds) / sum(epoch_seconds), 1) if epoch_seconds else 0.0


@dataclass
class Phase:
    name: str
    epochs: int
    learning_rate: float
    backbone_trainable: bool
    freeze_batchnorm: bool


def plan_phases(cfg: TrainConfig) -> list[Phase]:
    """Head first on a frozen pretrained backbone, then fine-tune everything at a tenth of the rate.

    A random backbone (--weights none) has nothing worth freezing, so that run is one phase.
    """
    if cfg.weights.lower() == "none":
        return [Phase("full", cfg.epochs, cfg.learning_rate, True, False)]
    head = min(cfg.freeze_epochs, cfg.epochs)
    phases = [Phase("head", head, cfg.learning_rate, False, True),
              Phase("finetune", cfg.epochs - head, cfg.learning_rate / 10, True, True)]
    return [p for p in phases if p.epochs > 0]


def distribution_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over several GPUs; the default (no-op) strategy otherwise."""
    gpus = tf.config.list_physical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def set_precision(mixed: bool) -> str:
    if mixed and tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    elif mixed:
        log.warning("--mixed-precision ignored: no GPU visible, float32 it is")
    return keras.mixed_precision.global_policy().name


def with_augmentation(model: keras.Model, seed: int) -> keras.Model:
    """The model to fit: random augmentation of whole batches, then the model.

    The augmentation runs in the training graph (on the GPU when there is one) and is inactive at
    inference; only the bare `model` is ever saved, so exported models carry none of it.
    """
    return keras.Sequential([keras.Input(model.input_shape[1:], name="image"), make_augmenter(seed), model],
                            name="train_with_augmentation")


def compile_for(model: keras.Model, phase: Phase, loss: keras.losses.Loss, steps: int,
                trainer: keras.Model | None = None) -> None:
    """Set the phase's trainable layers on `model`, then compile `trainer` (the model, or its augmented wrapper)."""
    set_backbone_trainable(model, phase.backbone_trainable, phase.freeze_batchnorm)
    model = trainer or model
    schedule = keras.optimizers.schedules.CosineDecay(phase.learning_rate, decay_steps=max(1, steps * phase.epochs),
                                                      alpha=0.01)
    n = model.output_shape[-1]
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss,
                  metrics=[keras.metrics.BinaryAccuracy(name="accuracy"),
                           keras.metrics.AUC(multi_label=True, num_labels=n, name="auc")])


def make_run_card(cfg: TrainConfig, model_path: Path, rows: dict[str, Any], y_train: np.ndarray,
                  loss: keras.losses.Loss, metrics: Any, throughputs: dict[str, Throughput], train_seconds: float,
                  policy: str) -> RunCard:
    """The one place a run card is built: config, data, class weights, validation metrics, speed, provenance."""
    labels = cfg.labels
    return RunCard(
        model=str(model_path),
        config=cfg.to_json(),
        data={p: len(r) for p, r in rows.items()}
        | {"train_positive_rate": dict(zip(labels, y_train.mean(axis=0).round(4).tolist()))},
        class_weights=({label: {"positive": p, "negative": n}
                        for label, p, n in zip(labels, loss.pos_weights, loss.neg_weights)}
                       if isinstance(loss, WeightedBinaryCrossentropy) else None),
        validation_metrics=json.loads(metrics.to_json(orient="index")),
        epochs_trained=sum(len(t.epoch_seconds) for t in throughputs.values()),
        time_s=round(train_seconds, 1),
        train_images_per_s=images_per_s(len(rows["train"]), [s for t in throughputs.values() for s in t.epoch_seconds]),
        train_images_per_s_by_phase={name: images_per_s(len(rows["train"]), t.epoch_seconds)
                                     for name, t in throughputs.items() if t.epoch_seconds},
        environment={"tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version(),
                     "cpus": os.cpu_count(), "gpus": len(tf.config.list_physical_devices("GPU")), "precision": policy},
        provenance=provenance(cfg.data_dir),
    )


def train(cfg: TrainConfig, extra_callbacks: Sequence[keras.callbacks.Callback] = ()) -> RunCard:
    """Train, keep the best model by validation loss, save it under models/ with its run card."""
    from celeba.evaluate import dataset_probabilities
    from celeba.metrics import label_metrics

    started = time.perf_counter()
    labels = check_labels(cfg.labels)
    keras.utils.set_random_seed(cfg.seed)
    log.info("config: %s", json.dumps(cfg.to_json()))
    index = load_index(cfg.data_dir, check_images=cfg.check_images)
    rows = {p: split(index, p, cfg.partition_limit(p)) for p in ("train", "validation")}
    for partition, part in rows.items():
        if part.empty:
            raise CelebADataError(f"{cfg.data_dir}: no {partition} images (check list_eval_partition and limits)")
    log.info("images: %d train, %d validation", len(rows["train"]), len(rows["validation"]))
    y_train = labels_array(rows["train"], labels)

    run_dir = cfg.models_dir / cfg.run_name
    model_path = cfg.models_dir / f"{cfg.run_name}.keras"
    if not cfg.resume and run_dir.exists():
        log.info("fresh run: clearing %s (use --resume to continue it)", run_dir)
        shutil.rmtree(run_dir)

    policy = set_precision(cfg.mixed_precision)
    strategy = distribution_strategy()
    with strategy.scope():
        model = build_model(len(labels), cfg.image_size, cfg.weights, cfg.dense_units, cfg.dropout)
        trainer = with_augmentation(model, cfg.seed) if cfg.augment else model
        loss = make_loss(cfg.loss, y_train)
    run_dir.mkdir(parents=True, exist_ok=True)  # after the model: a failed weights download leaves no empty folder

    batch = cfg.batch_size * strategy.num_replicas_in_sync
    train_ds = make_dataset(rows["train"], labels, cfg.image_size, batch, training=True, cache=cfg.cache,
                            seed=cfg.seed, sampling=cfg.sampling)
    val_ds = make_dataset(rows["validation"], labels, cfg.image_size, batch, cache=cfg.cache)
    steps = int(np.ceil(len(rows["train"]) / batch))

    best_path = run_dir / "best.keras"
    throughputs: dict[str, Throughput] = {}
    offset = 0
    for phase in plan_phases(cfg):
        done_path = run_dir / f"phase-{phase.name}.weights.h5"
        throughput = throughputs[phase.name] = Throughput()
        with strategy.scope():
            compile_for(model, phase, loss, steps, trainer)
        if cfg.resume and done_path.is_file():
            log.info("resume: phase %r already done, loading %s", phase.name, done_path)
            with without_optimizer_warnings():
                model.load_weights(done_path)
        else:
            log.info("phase %r: %d epochs at lr %.2g, backbone %s", phase.name, phase.epochs, phase.learning_rate,
                     "trainable" if phase.backbone_trainable else "frozen")
            callbacks = [
                keras.callbacks.BackupAndRestore(str(run_dir / "backup" / phase.name)),
                BestCheckpoint(best_path, model),
                keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
                keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False),
                throughput,
                *extra_callbacks,
            ]
            trainer.fit(train_ds, validation_data=val_ds, initial_epoch=offset, epochs=offset + phase.epochs,
                      callbacks=callbacks, verbose=keras_verbose(), shuffle=False)  # tf.data shuffles
            save_atomic(model, done_path)
        offset += phase.epochs

    if best_path.is_file():
        model.load_weights(best_path)
    train_seconds = time.perf_counter() - started
    probs = dataset_probabilities(model, rows["validation"], labels, cfg.image_size, batch)
    metrics = label_metrics(labels_array(rows["validation"], labels), probs, labels)
    # The saved model keeps its loss but not the optimizer state (a third of the size); resuming uses the backup.
    with strategy.scope():
        compile_for(model, Phase("saved", 1, cfg.learning_rate, True, False), loss, steps)
    save_atomic(model, model_path)

    card = make_run_card(cfg, model_path, rows, y_train, loss, metrics, throughputs, train_seconds, policy)
    card.save(card_path(model_path))
    log.info("saved %s (%.0f s); validation accuracy: %s", model_path, train_seconds,
             ", ".join(f"{k} {v:.3f}" for k, v in metrics["accuracy"].items()))
    return card
