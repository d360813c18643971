"""Training at scale: augmentation lives only in the training graph, and the multi-worker strategy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from celeba.data import SAMPLE_DIR, labels_array, load_image, load_index, split
from celeba.evaluate import dataset_probabilities
from celeba.metrics import label_metrics
from celeba.model import load_model
from celeba.train import with_augmentation

RANDOM_LAYERS = (
    keras.layers.RandomFlip,
    keras.layers.RandomRotation,
    keras.layers.RandomTranslation,
    keras.layers.RandomZoom,
    keras.layers.RandomBrightness,
    keras.layers.RandomContrast,
)


def test_saved_model_has_no_augmentation_and_predict_is_a_plain_model_call(tiny_model, sample_dir):
    model, labels = load_model(tiny_model)  # trained with augmentation on (the default)
    layers = list(model._flatten_layers(include_self=False, recursive=True))
    assert layers and not [layer.name for layer in layers if isinstance(layer, RANDOM_LAYERS)]
    rows = split(load_index(sample_dir), "test", 8)
    x = np.stack([load_image(path, 64).numpy() for path in rows["path"]])
    direct = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(dataset_probabilities(model, rows, labels, 64, batch_size=4), direct, atol=1e-5)


def test_training_wrapper_is_the_model_at_inference_and_augments_in_training(tiny_model, sample_dir):
    model, _ = load_model(tiny_model)
    trainer = with_augmentation(model, seed=0)
    rows = split(load_index(sample_dir), "test", 4)
    x = np.stack([load_image(path, 64).numpy() for path in rows["path"]])
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(trainer(x, training=False)), keras.ops.convert_to_numpy(model(x, training=False))
    )
    augment = trainer.layers[0]
    assert augment.name == "augment"
    assert not np.allclose(keras.ops.convert_to_numpy(augment(x, training=True)), x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augment(x, training=False)), x)


def _free_ports(n: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_in_step_and_only_the_chief_writes(tmp_path):
    """Two `train --strategy multiworker` processes on localhost (CPU), one TF_CONFIG each, one short epoch."""
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    models = tmp_path / "models"
    workers = []
    for index in range(2):
        (tmp_path / f"tmp{index}").mkdir()
        env = {
            **os.environ,
            "CUDA_VISIBLE_DEVICES": "",
            "TMPDIR": str(tmp_path / f"tmp{index}"),
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        }
        command = [
            sys.executable,
            "-c",
            "from celeba.cli import train_main; train_main()",
            "--strategy",
            "multiworker",
            "--weights",
            "none",
            "--image-size",
            "32",
            "--limit",
            "8",
            "--batch-size",
            "4",  # per replica: one step of 8 images per epoch
            "--epochs",
            "1",
            "--no-check-images",
            "--models-dir",
            str(models),
            "--name",
            "mw",
            "--run-eagerly",  # the cluster logic is the same traced or eager; test_train traces the project's step
        ]
        workers.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        logs = [worker.communicate(timeout=1500)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for index, (worker, log) in enumerate(zip(workers, logs)):
        assert worker.returncode == 0, f"worker {index}:\n{log[-3000:]}"
        assert "strategy: multiworker (CollectiveAllReduceStrategy), 2 replicas" in log
    assert sorted(p.name for p in models.iterdir()) == ["mw", "mw.json", "mw.keras"]  # the chief's files only
    chief, labels = load_model(models / "mw.keras")
    other = keras.models.load_model(tmp_path / "tmp1" / "celeba-worker-1" / "mw.keras", compile=False)
    assert labels == ("Male", "Young") and len(chief.weights) == len(other.weights) > 100
    for a, b in zip(chief.weights, other.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), err_msg=a.path)
    card = json.loads((models / "mw.json").read_text())
    assert card["config"]["strategy"] == "multiworker" and card["data"]["train"] == 8
    rows = split(load_index(SAMPLE_DIR), "validation", 8)  # the card's metrics: every validation row, in order
    again = label_metrics(labels_array(rows, labels), dataset_probabilities(chief, rows, labels, 32), labels)
    for label in labels:
        assert card["validation_metrics"][label]["roc_auc"] == pytest.approx(again.loc[label, "roc_auc"], abs=1e-6)
        assert card["validation_metrics"][label]["tp"] == again.loc[label, "tp"]


def test_strategies_on_one_machine():
    import tensorflow as tf

    from celeba.train import is_chief, make_strategy

    assert make_strategy("auto").num_replicas_in_sync == 1  # no GPU here: the default strategy
    mirrored = make_strategy("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy) and is_chief(mirrored)
    with pytest.raises(ValueError, match="unknown strategy 'ring'"):
        make_strategy("ring")


@pytest.mark.parametrize(
    "cluster,task,chief",
    [
        ({"worker": ["a:1", "b:1"]}, ("worker", 0), True),
        ({"worker": ["a:1", "b:1"]}, ("worker", 1), False),
        ({"chief": ["c:1"], "worker": ["a:1"]}, ("worker", 0), False),
        ({"chief": ["c:1"], "worker": ["a:1"]}, ("chief", 0), True),
    ],
)
def test_only_one_task_is_the_chief(cluster, task, chief):
    from types import SimpleNamespace

    import tensorflow as tf

    from celeba.train import is_chief

    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task[0], task_id=task[1]
    )
    assert is_chief(SimpleNamespace(cluster_resolver=resolver)) is chief
