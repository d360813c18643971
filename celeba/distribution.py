"""Where a training runs: one device, several GPUs or several workers (TF_CONFIG), which process writes, and mixed
precision."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from celeba.config import ConfigError, TrainConfig

log = logging.getLogger(__name__)


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
    def reduce_per_replica(values: Any, strategy: Any, reduction: Any) -> Any:
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):

            def mean(v: Any) -> Any:
                local = v.values[0] if isinstance(v, tf.distribute.DistributedValues) else tf.convert_to_tensor(v)
                return strategy.reduce("MEAN", v, axis=0 if local.shape.rank else None)

            return tf.nest.map_structure(mean, values)
        return original(values, strategy, reduction)

    tf_trainer.reduce_per_replica = reduce_per_replica

    def symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> Any:
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

    def on_test_begin(self, logs: Any = None) -> None:
        self.average()

    def on_train_end(self, logs: Any = None) -> None:
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
