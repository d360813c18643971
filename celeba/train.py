"""Training: data -> model -> two-phase fit (head, then fine-tune) -> atomically saved model + run card."""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import os
import platform
import shutil
import signal
import socket
import tempfile
import threading
import time
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from celeba.config import ConfigError, TrainConfig
from celeba.data import CelebADataError, check_labels, labels_array, load_index, make_augmenter, make_dataset, split
from celeba.files import atomic_path, remove_stale_temporaries
from celeba.losses import MaskedAUC, MaskedBinaryAccuracy, WeightedBinaryCrossentropy, make_loss
from celeba.model import build_model, embed_labels, set_backbone_trainable, without_optimizer_warnings
from celeba.runcard import RunCard, card_path, provenance
from celeba.runtime import keras_verbose
from celeba.sources import PhotoSource, photo_rows

log = logging.getLogger(__name__)


#: Test-only hook: "<epoch>:<marker file>" makes the backup of that epoch stop half-written, create the marker
#: and wait, so that a test can SIGKILL a real training in the middle of the write.
PAUSE_IN_BACKUP_ENV = "CELEBA_TEST_PAUSE_IN_BACKUP"


def save_atomic(model: keras.Model, path: Path, labels: Sequence[str] | None = None) -> None:
    """Write to a temporary file and rename, so an interruption never leaves a half-written model.

    With `labels`, they are written into the `.keras` file itself, so model and labels are one unit.
    """
    with atomic_path(path) as tmp:
        if path.name.endswith(".weights.h5"):
            model.save_weights(tmp)
        else:
            model.save(tmp)
            if labels is not None:
                embed_labels(tmp, labels)


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))


def _pause_for_test(epoch: int, tmp: Path) -> None:
    spec = os.environ.get(PAUSE_IN_BACKUP_ENV, "")
    if spec.partition(":")[0] == str(epoch):
        size = tmp.stat().st_size
        with open(tmp, "r+b") as f:  # what a kill mid-write leaves: the first half of the file
            f.truncate(size // 2)
        Path(spec.partition(":")[2]).write_text(str(os.getpid()))
        time.sleep(600)


class AtomicBackup(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, made safe against a kill or a full disk during the epoch-end write.

    Keras rewrites one `latest.weights.h5` in place: a kill mid-write leaves a broken file and the run
    cannot resume. Here every backup goes to a temporary file renamed to `epoch-<n>.weights.h5`
    (n = epochs completed, so the file and its epoch are one unit) and the previous backup is kept.
    On resume the newest readable backup wins; broken ones are reported and skipped; with none the
    phase starts over from its initial state, so resuming is never worse than starting over.
    `history` (the CSVLogger's file) loses the rows of epochs that will be trained again.
    """

    def __init__(self, backup_dir: Path, history: Path | None = None, start_epoch: int = 0, keep: int = 2):
        super().__init__(str(backup_dir), delete_checkpoint=False)  # train() deletes it once the phase is saved
        self.dir, self.history, self.start_epoch, self.keep = Path(backup_dir), history, start_epoch, keep
        self.recovered: dict[str, Any] = {}
        self._restored = False

    def backups(self) -> list[tuple[int, Path]]:
        """(epochs completed, file), newest first."""
        found = []
        for path in self.dir.glob("epoch-*.weights.h5"):
            number = path.name.removeprefix("epoch-").removesuffix(".weights.h5")
            if number.isdigit():
                found.append((int(number), path))
        return sorted(found, reverse=True)

    def on_train_begin(self, logs: dict | None = None) -> None:
        if not self._restored:
            self.restore()

    def restore(self) -> None:
        """Load the newest readable backup into the model (or leave it as it is) and set the initial epoch."""
        self._restored = True
        self.model._initial_epoch = None  # Keras keeps it across fit() calls: a second phase would inherit it
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temporaries(self.dir):
            log.warning("resume: removed %s, a backup whose write was interrupted", stale)
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        variables = list(self.model.variables) + (list(optimizer.variables) if optimizer is not None else [])
        initial = [v.numpy() for v in variables]
        skipped = []
        for epoch, path in self.backups():
            try:
                with without_optimizer_warnings():
                    self.model.load_weights(path)
            except Exception as exc:  # h5py raises OSError, KeyError, ValueError... for a broken file
                log.warning(
                    "resume: %s is unreadable (%s: %s); trying the previous backup",
                    path,
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
                skipped.append(str(path))
                continue
            self.model._initial_epoch = epoch
            self.recovered = {"epochs_completed": epoch, "file": str(path), "skipped": skipped}
            log.info("resume: recovered the state after %d completed epoch(s) from %s", epoch, path)
            break
        else:
            for variable, value in zip(variables, initial):  # a broken file may have been partly loaded
                variable.assign(value)
            if skipped:
                log.warning("resume: no readable backup in %s; this phase starts over", self.dir)
            self.recovered = {"epochs_completed": None, "file": None, "skipped": skipped}
        if self.history is not None:
            trim_history(self.history, self.model._initial_epoch or self.start_epoch)

    def _save_model(self) -> None:
        epoch = self._current_epoch
        path = self.dir / f"epoch-{epoch:04d}.weights.h5"
        with atomic_path(path) as tmp:
            self.model.save_weights(tmp)
            _pause_for_test(epoch, tmp)
        for _, old in self.backups()[self.keep :]:
            old.unlink(missing_ok=True)


class _BeginFirst(keras.callbacks.Callback):
    """Runs `backup.on_train_begin` before the other callbacks (CSVLogger opens the history it trims),
    while `backup` itself sits later in the list for the epoch-end order."""

    def __init__(self, backup: AtomicBackup):
        super().__init__()
        self.backup = backup

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        self.backup.set_model(model)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.backup.restore()


def trim_history(path: Path, first_epoch: int) -> None:
    """Drop the CSV rows of epochs >= `first_epoch` (they will be trained again), in place.

    In place, not atomically: CSVLogger may already hold the file open for appending.
    """
    if not path.is_file():
        return
    with open(path, "r+", newline="") as f:
        lines = f.readlines()
        keep = lines[:1] + [
            line for line in lines[1:] if line.split(",")[0].isdigit() and int(line.split(",")[0]) < first_epoch
        ]
        if len(keep) < len(lines):
            f.seek(0)
            f.writelines(keep)
            f.truncate()


def history_epochs(path: Path) -> int:
    """Epochs recorded in a run's history.csv: the epochs the saved model has been trained for."""
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        return len({row["epoch"] for row in csv.DictReader(f)})


class BestCheckpoint(keras.callbacks.Callback):
    """Keep the model with the lowest validation loss across phases, written atomically.

    `target` is the model to save: the bare model, not the training wrapper with its augmentation.
    """

    def __init__(self, path: Path, target: keras.Model, monitor: str = "val_loss", higher_is_better: bool = False):
        super().__init__()
        self.path, self.target, self.monitor = path, target, monitor
        self.sign = -1.0 if higher_is_better else 1.0  # stored and compared as a value to minimise
        self.state_path = path.with_suffix(".json")
        self.best = json.loads(self.state_path.read_text())["best"] if self.state_path.is_file() else np.inf

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is not None and self.sign * value < self.best:
            self.best = self.sign * float(value)
            save_atomic(self.target, self.path)
            write_json_atomic({"best": self.best, "epoch": epoch}, self.state_path)


class GroupValidation(keras.callbacks.Callback):
    """Worst-group validation accuracy at every epoch end, as `val_worst_group` in the logs (for selecting the
    epoch: Group DRO's worst group generalises only with early stopping on it, Sagawa et al. 2020).

    A group is a value combination of `groups` (labels of the model), e.g. Male x Young; every label's accuracy
    is taken in every group with at least one known truth, and the worst of them is reported.
    """

    def __init__(self, target: keras.Model, dataset: Any, y_val: np.ndarray, group_index: Sequence[int]):
        super().__init__()
        self.target, self.dataset, self.y = target, dataset, np.asarray(y_val, np.float32)
        self.keys = group_keys(self.y, group_index)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        probs = self.target.predict(self.dataset, verbose=0)
        worst, mean = worst_group_accuracy(self.y, probs, self.keys)
        if logs is not None:
            logs["val_worst_group"], logs["val_mean_group"] = worst, mean


def group_keys(y: np.ndarray, group_index: Sequence[int]) -> np.ndarray:
    """One integer per row for the value combination of the group labels (unknown counts as 0)."""
    values = np.nan_to_num(np.asarray(y, np.float32)[:, list(group_index)]) > 0.5
    return (values * (1 << np.arange(values.shape[1]))).sum(axis=1)


def worst_group_accuracy(y: np.ndarray, probs: np.ndarray, keys: np.ndarray) -> tuple[float, float]:
    """(worst, mean) accuracy over every (label, group) cell with known truth."""
    cells = []
    for j in range(y.shape[1]):
        for key in np.unique(keys):
            rows = (keys == key) & np.isfinite(y[:, j])
            if rows.any():
                cells.append(float(((probs[rows, j] >= 0.5) == (y[rows, j] > 0.5)).mean()))
    return (min(cells), float(np.mean(cells))) if cells else (float("nan"), float("nan"))


class Throughput(keras.callbacks.Callback):
    """Seconds spent in the training batches of each epoch (validation excluded), for images/second."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch_seconds: list[float] = []
        self._start = 0.0
        self._train_end: float | None = None  # when the epoch's validation began, if it ran

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


def distribution_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over several GPUs; the default (no-op) strategy otherwise."""
    gpus = tf.config.list_physical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


STRATEGIES = ("auto", "mirrored", "multiworker")


def read_tf_config(raw: str | None = None) -> dict[str, Any] | None:
    """The `TF_CONFIG` environment variable (or `raw`), checked: None when it is unset or names no cluster.

    TensorFlow waits forever on a malformed one (`[]`) or fails with a traceback that does not say where the
    problem is; here a ConfigError names TF_CONFIG and what is wrong (the CLI prints it, exit 2).
    """
    raw = os.environ.get("TF_CONFIG") if raw is None else raw
    if raw is None or not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"TF_CONFIG: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ConfigError(f'TF_CONFIG: must be a JSON object with "cluster" and "task", got a {type(value).__name__}')
    cluster = value.get("cluster")
    if not cluster:
        return None
    if not isinstance(cluster, dict) or not all(
        isinstance(addresses, list) and all(isinstance(a, str) and ":" in a for a in addresses)
        for addresses in cluster.values()
    ):
        raise ConfigError('TF_CONFIG: "cluster" must map task types to lists of "host:port" addresses')
    task = value.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ConfigError('TF_CONFIG: "task" must give this process\'s "type" and "index"')
    kind, index = task["type"], task["index"]
    if kind not in cluster:
        raise ConfigError(f"TF_CONFIG: task type {kind!r} is not in the cluster (which has {', '.join(cluster)})")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ConfigError(
            f"TF_CONFIG: task index {index!r} is out of range: the cluster has {len(cluster[kind])} {kind} "
            f"task(s), 0 to {len(cluster[kind]) - 1}"
        )
    return value


def wait_for_peers(tf_config: dict[str, Any], timeout: float, poll: float = 0.5) -> None:
    """Wait until every other task of TF_CONFIG accepts connections on its port; ConfigError after `timeout` s.

    TensorFlow's own wait (inside `MultiWorkerMirroredStrategy()`) has no limit, holds the GIL in C++ and
    installs a SIGTERM handler of its own: a peer that never starts used to hang the process, deaf to SIGTERM.
    This wait runs in Python, so SIGINT and SIGTERM end it. Meanwhile this task listens on its own port (closed
    before TensorFlow's server takes it), so that the peers, waiting the same way, see it too.
    """
    me = tf_config["task"]
    own = tf_config["cluster"][me["type"]][me["index"]]
    others = {
        f"{kind} {i} ({address})": address
        for kind, addresses in tf_config["cluster"].items()
        for i, address in enumerate(addresses)
        if (kind, i) != (me["type"], me["index"])
    }
    try:
        listener = socket.create_server(("", int(own.rsplit(":", 1)[1])), reuse_port=False)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(
            f"TF_CONFIG: {me['type']} {me['index']}'s own address {own}: cannot listen ({reason})"
        ) from None
    with listener:
        waiting = dict(others)
        log.info("multiworker: waiting up to %g s for %s (TF_CONFIG)", timeout, ", ".join(waiting) or "no other task")
        deadline = time.monotonic() + timeout
        while waiting:
            for name, address in list(waiting.items()):
                host, port = address.rsplit(":", 1)
                with contextlib.suppress(OSError, ValueError), socket.create_connection((host, int(port)), poll):
                    del waiting[name]
            if waiting and time.monotonic() > deadline:
                raise ConfigError(
                    f"TF_CONFIG: {', '.join(waiting)} did not start within {timeout:g} s (--startup-timeout): "
                    "start it, or check its address"
                )
            if waiting:
                time.sleep(poll)
    log.info("multiworker: every task of TF_CONFIG is up")


def make_strategy(name: str = "auto", startup_timeout: float = 300.0) -> tf.distribute.Strategy:
    """auto: mirrored over the local GPUs when there are several, else one device; mirrored: every local GPU;
    multiworker: synchronous data-parallel training over the machines of the standard `TF_CONFIG`.

    TensorFlow wants a multi-worker strategy created before any other TensorFlow work in the process. For one,
    TF_CONFIG is checked first and every other task is awaited for at most `startup_timeout` seconds.
    """
    if name == "multiworker":
        tf_config = read_tf_config()
        if tf_config is None:
            log.warning("--strategy multiworker without a TF_CONFIG cluster: training as one worker")
            return tf.distribute.MultiWorkerMirroredStrategy()
        main = threading.current_thread() is threading.main_thread()
        if main:  # SIGTERM stops the wait and the training like Ctrl-C (the CLI: "interrupted", exit 130)
            signal.signal(signal.SIGTERM, signal.default_int_handler)
        wait_for_peers(tf_config, startup_timeout)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        if main:  # TensorFlow's own SIGTERM handler only notes a preemption, and the run went on
            signal.signal(signal.SIGTERM, signal.default_int_handler)
        return strategy
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "auto":
        return distribution_strategy()
    raise ValueError(f"unknown strategy {name!r}; choose from {STRATEGIES}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The one worker that writes the model, run card, checkpoints and backup (TF_CONFIG's chief, else worker 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return True
    cluster = resolver.cluster_spec().as_dict()
    if not cluster or resolver.task_type is None:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster
    )


def fit_on_several_workers(model: keras.Model) -> keras.Model:
    """Let Keras 3's `fit` run under MultiWorkerMirroredStrategy (keras-team/keras#20585), two small fixes.

    1. Before the first step, `fit` reduces the first batch across replicas only to learn its shapes, with
       a call that multi-worker strategies reject: this worker's own replica's values give the same shapes.
    2. Each step averages the (scalar) metric values across workers along axis 0, which scalars lack:
       scalars are averaged whole.
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = getattr(tf_trainer.reduce_per_replica, "__wrapped__", tf_trainer.reduce_per_replica)

    @functools.wraps(original)
    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):

            def mean(v):
                local = v.values[0] if isinstance(v, tf.distribute.DistributedValues) else tf.convert_to_tensor(v)
                return strategy.reduce("MEAN", v, axis=0 if local.shape.rank else None)

            return tf.nest.map_structure(mean, values)
        return original(values, strategy, reduction)

    tf_trainer.reduce_per_replica = reduce_per_replica

    def symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: v.values[0] if isinstance(v, tf.distribute.DistributedValues) else v, next(batches)
                )
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = types.MethodType(symbolic_build, model)
    return model


class AverageAcrossWorkers(keras.callbacks.Callback):
    """Average the model's non-trainable variables (BatchNorm moving statistics) over the workers.

    Gradients are all-reduced, so trainable weights stay equal everywhere; moving statistics are updated
    from each worker's own batches and drift apart. Averaging them before every validation (and at the
    end) gives every worker the same model to validate, checkpoint and save.
    """

    def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy):
        super().__init__()
        self.target, self.strategy = model, strategy

    def average(self) -> None:
        variables = [v for v in self.target.non_trainable_variables if "float" in str(v.dtype)]
        if not variables:
            return
        flat = tf.concat([tf.reshape(tf.cast(v.value, tf.float32), [-1]) for v in variables], axis=0)
        mean = self.strategy.reduce(
            "MEAN", self.strategy.experimental_distribute_values_from_function(lambda _: tf.identity(flat)), axis=None
        )
        sizes = [int(np.prod(v.shape)) for v in variables]
        for v, part in zip(variables, tf.split(mean, sizes)):
            v.assign(tf.cast(tf.reshape(part, v.shape), v.dtype))

    def on_test_begin(self, logs=None):
        self.average()

    def on_train_end(self, logs=None):
        self.average()


def output_dir(cfg: TrainConfig, strategy: tf.distribute.Strategy) -> Path:
    """Where this process writes: --models-dir for the chief; a private temporary folder for other workers.

    Other workers take part in every step but their copies are thrown away (TensorFlow's multi-worker
    advice). With --resume they first copy the chief's run folder, so every worker resumes the same state:
    across machines, --models-dir must then be storage every worker reads (a shared mount).
    """
    if is_chief(strategy):
        return cfg.models_dir
    resolver = strategy.cluster_resolver
    out = Path(tempfile.gettempdir()) / f"celeba-{resolver.task_type}-{resolver.task_id}"
    shutil.rmtree(out / cfg.run_name, ignore_errors=True)
    if cfg.resume and (cfg.models_dir / cfg.run_name).is_dir():
        shutil.copytree(cfg.models_dir / cfg.run_name, out / cfg.run_name)
    log.info(
        "worker %s %d: writes to %s (the chief writes %s)", resolver.task_type, resolver.task_id, out, cfg.models_dir
    )
    return out


def set_precision(mixed: bool) -> str:
    if mixed and tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    elif mixed:
        log.warning("--mixed-precision ignored: no GPU visible, float32 it is")
    return keras.mixed_precision.global_policy().name


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


class RunLockedError(CelebADataError):
    """Another process is training a run of the same name."""


@contextlib.contextmanager
def run_lock(models_dir: Path, name: str) -> Iterator[Path]:
    """Hold an exclusive lock on the run `name` for the whole training (released when the process dies).

    Without it a second training of the same --name deletes the first one's run folder under it.
    The lock file sits beside the run folder (which a fresh run deletes) and is removed on release, with the
    models folder when this run created it and left it empty (a failed start leaves nothing behind).
    """
    import fcntl

    created = not models_dir.exists()
    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / f".{name}.lock"
    try:
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if not path.exists() or path.stat().st_ino != os.fstat(handle.fileno()).st_ino:
                    raise BlockingIOError  # its holder removed it in between: another run owns the new one
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "?"
                raise RunLockedError(
                    f"{models_dir / name}: another training of --name {name} is running "
                    f"(process {owner}); wait for it to finish or pick another --name"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            try:
                yield path
            finally:
                path.unlink(missing_ok=True)  # before unlocking: a waiting opener then sees a new inode
                fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        if created:
            with contextlib.suppress(OSError):
                models_dir.rmdir()  # only if empty


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
    from celeba.metrics import label_metrics
    from celeba.model import dataset_probabilities

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
