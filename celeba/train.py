"""Training: data -> model -> two-phase fit (head, then fine-tune) -> atomically saved model + run card."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from celeba.callbacks import GroupValidation, Throughput, group_keys, images_per_s
from celeba.checkpoint import (
    AtomicBackup,
    BestCheckpoint,
    _BeginFirst,
    history_epochs,
    run_lock,
    save_atomic,
)
from celeba.config import TrainConfig
from celeba.data import CelebADataError, check_labels, labels_array, load_index, make_augmenter, make_dataset, split
from celeba.distribution import (
    AverageAcrossWorkers,
    fit_on_several_workers,
    make_strategy,
    output_dir,
    set_precision,
)
from celeba.files import remove_stale_temporaries
from celeba.losses import MaskedAUC, MaskedBinaryAccuracy, WeightedBinaryCrossentropy, make_loss
from celeba.metrics import label_metrics
from celeba.model import build_model, dataset_probabilities, set_backbone_trainable, without_optimizer_warnings
from celeba.runcard import RunCard, card_path, provenance
from celeba.runtime import keras_verbose
from celeba.sources import PhotoSource, photo_rows

log = logging.getLogger(__name__)


@dataclass
class Phase:
    name: str
    epochs: int
    learning_rate: float
    backbone_trainable: bool
    freeze_batchnorm: bool
    unfreeze: int | None = None  # fine-tuning: only the backbone's last N layers train (None: all)


def plan_phases(cfg: TrainConfig) -> list[Phase]:
    """Head first on a frozen pretrained backbone, then fine-tune (by default everything, at a tenth of the rate).

    A random backbone (--weights none) has nothing worth freezing, so that run is one phase.
    """
    if cfg.weights.lower() == "none":
        return [Phase("full", cfg.epochs, cfg.learning_rate, True, False)]
    head = min(cfg.freeze_epochs, cfg.epochs)
    finetune_lr = cfg.finetune_learning_rate or cfg.learning_rate / 10
    phases = [
        Phase("head", head, cfg.learning_rate, False, True),
        Phase("finetune", cfg.epochs - head, finetune_lr, True, True, cfg.unfreeze),
    ]
    return [p for p in phases if p.epochs > 0]


def with_augmentation(model: keras.Model, seed: int, strength: float = 1.0) -> keras.Model:
    """The model to fit: random augmentation of whole batches, then the model.

    The augmentation runs in the training graph (on the GPU when there is one) and is inactive at
    inference; only the bare `model` is ever saved, so exported models carry none of it.
    """
    augment = make_augmenter(seed, strength=strength)
    return keras.Sequential(
        [keras.Input(model.input_shape[1:], name="image"), augment, model], name="train_with_augmentation"
    )


ONE_CYCLE_WARMUP = 0.3  # share of a phase's steps spent warming up (Smith & Topin's one-cycle policy)


def learning_rate_schedule(name: str, peak: float, total_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """One phase's schedule, both from Keras' CosineDecay: down from the peak (cosine), or up to it first (one-cycle).

    One-cycle starts at a 25th of the peak, rises linearly for 30% of the steps, then follows the cosine down; both
    end at 1% of the peak.
    """
    if name == "one-cycle":
        warmup = max(1, round(total_steps * ONE_CYCLE_WARMUP))
        return keras.optimizers.schedules.CosineDecay(
            peak / 25, decay_steps=max(1, total_steps - warmup), alpha=0.01, warmup_target=peak, warmup_steps=warmup
        )
    return keras.optimizers.schedules.CosineDecay(peak, decay_steps=total_steps, alpha=0.01)


def compile_for(
    model: keras.Model,
    phase: Phase,
    loss: keras.losses.Loss,
    steps: int,
    trainer: keras.Model | None = None,
    run_eagerly: bool = False,
    weight_decay: float = 0.0,
    masked: bool = False,
    schedule_name: str = "cosine",
) -> None:
    """Set the phase's trainable layers on `model`, then compile `trainer` (the model, or its augmented wrapper).

    `masked`: labels may be unknown (NaN, several sources): the metrics skip them like the loss does.
    """
    set_backbone_trainable(model, phase.backbone_trainable, phase.freeze_batchnorm, phase.unfreeze)
    model = trainer or model
    schedule = learning_rate_schedule(schedule_name, phase.learning_rate, max(1, steps * phase.epochs))
    n = model.output_shape[-1]
    optimizer = (
        keras.optimizers.AdamW(schedule, weight_decay=weight_decay) if weight_decay else keras.optimizers.Adam(schedule)
    )
    metrics = (
        [MaskedBinaryAccuracy(name="accuracy"), MaskedAUC(multi_label=True, num_labels=n, name="auc")]
        if masked
        else [
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.AUC(multi_label=True, num_labels=n, name="auc"),
        ]
    )
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics, run_eagerly=run_eagerly)


def make_run_card(
    cfg: TrainConfig,
    model_path: Path,
    rows: dict[str, Any],
    y_train: np.ndarray,
    loss: keras.losses.Loss,
    metrics: Any,
    throughputs: dict[str, Throughput],
    train_seconds: float,
    policy: str,
) -> RunCard:
    """The one place a run card is built: config, data, class weights, validation metrics, speed, provenance."""
    labels = cfg.labels
    return RunCard(
        model=str(model_path),
        config=cfg.to_json(),
        data={p: len(r) for p, r in rows.items()}
        | {"train_positive_rate": dict(zip(labels, np.nanmean(y_train, axis=0).round(4).tolist()))}
        | ({"sources": source_counts(rows, cfg)} if "source" in rows["train"].columns else {}),
        class_weights=(
            {label: {"positive": p, "negative": n} for label, p, n in zip(labels, loss.pos_weights, loss.neg_weights)}
            if isinstance(loss, WeightedBinaryCrossentropy)
            else None
        ),
        validation_metrics=json.loads(metrics.to_json(orient="index")),
        epochs_trained=history_epochs(
            Path(model_path).parent / cfg.run_name / "history.csv"
        ),  # all runs of a resumed one
        time_s=round(train_seconds, 1),
        train_images_per_s=images_per_s(len(rows["train"]), [s for t in throughputs.values() for s in t.epoch_seconds]),
        train_images_per_s_by_phase={
            name: images_per_s(len(rows["train"]), t.epoch_seconds)
            for name, t in throughputs.items()
            if t.epoch_seconds
        },
        environment={
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "gpus": len(tf.config.list_physical_devices("GPU")),
            "precision": policy,
        },
        provenance=provenance(cfg.data_dir),
    )


def validation_groups(
    y_val: np.ndarray, probs: np.ndarray, labels: Sequence[str], groups: Sequence[str]
) -> dict[str, Any]:
    """Per label: validation accuracy of every group of `groups` (those among the labels), the worst and the
    group-balanced one; what `tune` and the run card's reader weigh besides the average."""
    index = [list(labels).index(g) for g in groups if g in labels]
    if not index:
        return {}
    keys = group_keys(y_val, index)
    names = {key: " & ".join(f"{labels[i]}={(key >> b) & 1}" for b, i in enumerate(index)) for key in np.unique(keys)}
    out: dict[str, Any] = {}
    for j, label in enumerate(labels):
        accs = {}
        for key, name in names.items():
            rows = (keys == key) & np.isfinite(y_val[:, j])
            if rows.any():
                accs[name] = round(float(((probs[rows, j] >= 0.5) == (y_val[rows, j] > 0.5)).mean()), 4)
        if accs:
            out[label] = {"worst": min(accs.values()), "balanced": round(float(np.mean(list(accs.values()))), 4)}
            out[label]["groups"] = accs
    return out


def source_counts(rows: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """Per source: images per partition and its share of the training draws (the run card's record of the mix)."""
    train = rows["train"]["source"]
    out = {}
    for source in dict.fromkeys(train):
        is_photos = source != "celeba"
        share = cfg.photos_weight if is_photos and cfg.photos_weight is not None else None
        if share is None and cfg.photos_weight is not None:
            share = 1.0 - cfg.photos_weight
        out[source] = {p: int((r["source"] == source).sum()) for p, r in rows.items()} | {
            "train_share": round(share if share is not None else float((train == source).mean()), 4)
        }
    return out


def photo_source(cfg: TrainConfig) -> PhotoSource | None:
    if cfg.photos is None:
        return None
    assert cfg.photos_split is not None  # TrainConfig checks it
    return PhotoSource(
        cfg.photos, cfg.photos_labels_csv, cfg.photos_pattern, cfg.photos_derive, cfg.photos_split, cfg.crops_dir
    )


def training_rows(cfg: TrainConfig, labels: Sequence[str]) -> dict[str, Any]:
    """Train and validation rows: CelebA's partitions, plus the photo folder's train and validation splits."""
    index = load_index(cfg.data_dir, check_images=cfg.check_images)
    rows = {p: split(index, p, cfg.partition_limit(p)) for p in ("train", "validation")}
    for partition, part in rows.items():
        if part.empty:
            raise CelebADataError(f"{cfg.data_dir}: no {partition} images (check list_eval_partition and limits)")
    source = photo_source(cfg)
    if source is None:
        return rows
    for partition in rows:
        photos = photo_rows(source, labels, [partition])
        if cfg.partition_limit(partition) is not None:
            photos = photos.iloc[: cfg.partition_limit(partition)]
        celeba = rows[partition][["image_id", "path", *labels]].astype({label: float for label in labels})
        rows[partition] = pd.concat(
            [celeba.assign(source="celeba"), photos[["image_id", "path", *labels, "source"]]], ignore_index=True
        )
    return rows


def check_groups(groups: Sequence[str], labels: Sequence[str]) -> list[int]:
    """The indices of the group labels among the model's labels; a bad spec is a clear error."""
    if not groups:
        raise CelebADataError("--groups: give at least one label, e.g. --groups Male Young")
    unknown = [g for g in groups if g not in labels]
    if unknown:
        raise CelebADataError(
            f"--groups: {', '.join(unknown)} not among the trained --labels ({', '.join(labels)}); "
            "groups are value combinations of trained labels"
        )
    if len(set(groups)) < len(groups):
        raise CelebADataError(f"--groups: a label given twice ({' '.join(groups)})")
    return [list(labels).index(g) for g in groups]


def source_weights(cfg: TrainConfig, train_rows: pd.DataFrame) -> list[float] | None:
    """CelebA's and the photos' shares of the training draws, from --photos-weight (None: their share of rows)."""
    if cfg.photos_weight is None or "source" not in train_rows.columns:
        return None
    return [1.0 - cfg.photos_weight, cfg.photos_weight]


def train(cfg: TrainConfig, extra_callbacks: Sequence[keras.callbacks.Callback] = ()) -> RunCard:
    """Train, keep the best model by validation loss, save it under models/ with its run card."""
    # First: a multi-worker strategy must precede other TensorFlow work.
    strategy = make_strategy(cfg.strategy, cfg.startup_timeout)
    models_dir = output_dir(cfg, strategy)  # the chief's --models-dir, or a worker's own temporary folder
    with run_lock(models_dir, cfg.run_name):
        return _train(cfg, extra_callbacks, strategy, models_dir)


def _train(
    cfg: TrainConfig,
    extra_callbacks: Sequence[keras.callbacks.Callback],
    strategy: tf.distribute.Strategy,
    models_dir: Path,
) -> RunCard:
    started = time.perf_counter()
    labels = check_labels(cfg.labels)
    log.info("strategy: %s (%s), %d replicas", cfg.strategy, type(strategy).__name__, strategy.num_replicas_in_sync)
    keras.utils.set_random_seed(cfg.seed)
    log.info("config: %s", json.dumps(cfg.to_json()))
    group_index = check_groups(cfg.groups, labels) if cfg.loss == "group-dro" or cfg.select_by == "worst_group" else []
    rows = training_rows(cfg, labels)
    log.info("images: %d train, %d validation", len(rows["train"]), len(rows["validation"]))
    y_train = labels_array(rows["train"], labels)
    y_val = labels_array(rows["validation"], labels)
    masked = bool(np.isnan(y_train).any() or np.isnan(y_val).any())

    run_dir = models_dir / cfg.run_name
    model_path = models_dir / f"{cfg.run_name}.keras"
    policy = set_precision(cfg.mixed_precision)
    with strategy.scope():
        model = build_model(len(labels), cfg.image_size, cfg.weights, cfg.dense_units, cfg.dropout)
        trainer = with_augmentation(model, cfg.seed, cfg.augment_strength) if cfg.augment else model
        if cfg.strategy == "multiworker":
            fit_on_several_workers(trainer)
        loss = make_loss(cfg.loss, y_train, group_index, cfg.dro_step, cfg.dro_adjustment, cfg.label_smoothing)

    # Data, model and loss are ready: only now may an earlier run of this name go (a failure above keeps it).
    if not cfg.resume and run_dir.exists():
        log.info("fresh run: clearing %s (use --resume to continue it)", run_dir)
        shutil.rmtree(run_dir)
    elif cfg.resume and not run_dir.exists():
        log.warning("--resume: no run folder %s to resume; starting from the first epoch", run_dir)
    # A kill during a save leaves a temporary file (the saved files are intact); this run's lock makes them ours.
    remove_stale_temporaries(models_dir, cfg.run_name)
    if run_dir.exists():
        remove_stale_temporaries(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)  # after the model: a failed weights download leaves no empty folder

    batch = cfg.batch_size * strategy.num_replicas_in_sync
    train_ds = make_dataset(
        rows["train"],
        labels,
        cfg.image_size,
        batch,
        training=True,
        cache=cfg.cache,
        seed=cfg.seed,
        sampling=cfg.sampling,
        source_weights=source_weights(cfg, rows["train"]),
    )
    val_ds = make_dataset(rows["validation"], labels, cfg.image_size, batch, cache=cfg.cache)
    steps = int(np.ceil(len(rows["train"]) / batch))

    best_path = run_dir / "best.keras"
    history_path = run_dir / "history.csv"
    throughputs: dict[str, Throughput] = {}
    offset = 0
    for phase in plan_phases(cfg):
        done_path = run_dir / f"phase-{phase.name}.weights.h5"
        throughput = throughputs[phase.name] = Throughput()
        with strategy.scope():
            compile_for(model, phase, loss, steps, trainer, cfg.run_eagerly, cfg.weight_decay, masked, cfg.schedule)
        if cfg.resume and done_path.is_file():
            log.info("resume: phase %r already done, loading %s", phase.name, done_path)
            with without_optimizer_warnings():
                model.load_weights(done_path)
        else:
            log.info(
                "phase %r: %d epochs at lr %.2g, backbone %s",
                phase.name,
                phase.epochs,
                phase.learning_rate,
                "trainable" if phase.backbone_trainable else "frozen",
            )
            backup = AtomicBackup(run_dir / "backup" / phase.name, history_path, start_epoch=offset)
            # Epoch-end order matters for a kill between two callbacks: the history row and the best model are
            # written before the backup that marks the epoch done (a repeated epoch's row is trimmed on resume).
            by_group = cfg.select_by == "worst_group"
            callbacks = [
                _BeginFirst(backup),
                *([GroupValidation(model, val_ds, y_val, group_index)] if by_group else []),
                BestCheckpoint(best_path, model, "val_worst_group" if by_group else "val_loss", by_group),
                keras.callbacks.CSVLogger(str(history_path), append=True),
                backup,
                keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False),
                throughput,
                *extra_callbacks,
            ]
            if cfg.strategy == "multiworker":
                callbacks.insert(0, AverageAcrossWorkers(model, strategy))
            trainer.fit(
                train_ds,
                validation_data=val_ds,
                initial_epoch=offset,
                epochs=offset + phase.epochs,
                callbacks=callbacks,
                verbose=keras_verbose(),
                shuffle=False,
            )  # tf.data shuffles
            save_atomic(model, done_path)
            shutil.rmtree(backup.dir, ignore_errors=True)  # only once the phase's result is safely on disk
        offset += phase.epochs

    if best_path.is_file():
        model.load_weights(best_path)
    train_seconds = time.perf_counter() - started
    probs = dataset_probabilities(model, rows["validation"], labels, cfg.image_size, batch)
    metrics = label_metrics(y_val, probs, labels)
    group_accuracy = validation_groups(y_val, probs, labels, cfg.groups)
    # The saved model keeps its loss but not the optimizer state (a third of the size); resuming uses the backup.
    with strategy.scope():
        compile_for(model, Phase("saved", 1, cfg.learning_rate, True, False), loss, steps, masked=masked)
    save_atomic(model, model_path, cfg.labels)

    card = make_run_card(cfg, model_path, rows, y_train, loss, metrics, throughputs, train_seconds, policy)
    card.extra["validation_groups"] = group_accuracy
    card.save(card_path(model_path))
    log.info(
        "saved %s (%.0f s); validation accuracy: %s",
        model_path,
        train_seconds,
        ", ".join(f"{k} {v:.3f}" for k, v in metrics["accuracy"].items()),
    )
    return card
