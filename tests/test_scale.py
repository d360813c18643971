"""Training at scale: augmentation lives only in the training graph, and the multi-worker strategy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from celeba.data import SAMPLE_DIR, labels_array, load_image, load_index, split
from celeba.metrics import label_metrics
from celeba.model import dataset_probabilities, load_model
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

    from celeba.distribution import is_chief, make_strategy

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

    from celeba.distribution import is_chief

    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task[0], task_id=task[1]
    )
    assert is_chief(SimpleNamespace(cluster_resolver=resolver)) is chief


# --------------------------------------------------------------------------- TF_CONFIG problems, a missing peer


@pytest.mark.parametrize(
    "raw,why",
    [
        ("[]", 'must be a JSON object with "cluster" and "task", got a list'),
        ("{cluster", "not JSON (Expecting property name enclosed in double quotes"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "task index 1 is out of range"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "task type 'chief' is not in"),
        ('{"cluster": {"worker": ["a:1"]}}', '"task" must give'),
        ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}', '"cluster" must map task types'),
    ],
)
def test_a_malformed_tf_config_is_named(raw, why):
    from celeba.config import ConfigError
    from celeba.distribution import read_tf_config

    with pytest.raises(ConfigError) as caught:
        read_tf_config(raw)
    assert str(caught.value).startswith(f"TF_CONFIG: {why}")


def test_no_cluster_is_one_worker():
    from celeba.distribution import read_tf_config

    assert read_tf_config("") is None and read_tf_config('{"cluster": {}}') is None


def _multiworker(tmp_path, tf_config: str | None, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"} | {
        "CUDA_VISIBLE_DEVICES": "",
        "TMPDIR": str(tmp_path),
    }
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config
    command = [
        *(sys.executable, "-m", "celeba", "train", "--strategy", "multiworker", "--weights", "none"),
        *("--image-size", "32", "--limit", "8", "--batch-size", "8", "--epochs", "1", "--no-check-images"),
        *("--run-eagerly", "--models-dir", str(tmp_path / "models"), "--name", "mw", *extra),
    ]
    # SIGINT as a terminal delivers it: a suite started in the background (`cmd &`) inherits SIGINT ignored, and
    # Python keeps an inherited SIG_IGN, which would make the SIGINT case test the launcher, not the worker.
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _two_workers(index: int) -> str:
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1])  # the coordination leader, and a worker waiting for it
def test_a_peer_that_never_starts_ends_the_start_with_one_line_naming_it(tmp_path, index):
    """It used to wait forever, silently."""
    tf_config = _two_workers(index)
    peer = json.loads(tf_config)["cluster"]["worker"][1 - index]
    proc = _multiworker(tmp_path, tf_config, "--startup-timeout", "3")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    assert f"multiworker: waiting up to 3 s for worker {1 - index} ({peer}) (TF_CONFIG)" in err
    assert err.strip().splitlines()[-1] == (
        f"error: TF_CONFIG: worker {1 - index} ({peer}) did not start within 3 s (--startup-timeout): "
        "start it, or check its address"
    )
    assert "Traceback" not in err and not (tmp_path / "models" / "mw").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_worker_waiting_for_its_peer_stops_on_sigterm_and_sigint(tmp_path, sig):
    """It used to ignore SIGTERM (TensorFlow's preemption handler), still running 24 minutes later."""
    proc = _multiworker(tmp_path, _two_workers(0))
    try:
        waited = ""
        while "multiworker: waiting up to 300 s" not in waited:  # the start-up wait has begun
            line = proc.stderr.readline()
            assert line, "the worker ended before waiting"
            waited += line
        time.sleep(1)
        sent = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - sent < 30
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("interrupted: run the same command with --resume")


@pytest.mark.slow
def test_multiworker_without_tf_config_warns_and_trains_as_one_worker(tmp_path):
    proc = _multiworker(tmp_path, None)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "WARNING --strategy multiworker without a TF_CONFIG cluster: training as one worker" in err


def test_a_malformed_tf_config_is_one_error_line_from_the_cli(tmp_path):
    proc = _multiworker(tmp_path, "[]")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert errors == ['error: TF_CONFIG: must be a JSON object with "cluster" and "task", got a list']


@pytest.mark.slow
def test_sigterm_stops_a_training_worker(tmp_path):
    """Once the strategy exists TensorFlow's SIGTERM handler (a preemption notice) is replaced: the worker stops."""
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    workers = []
    for index in range(2):
        (tmp_path / f"w{index}").mkdir()
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(_multiworker(tmp_path / f"w{index}", tf_config, "--epochs", "200", "--batch-size", "4"))
    try:
        log = ""
        while "phase 'full'" not in log:  # training has begun
            line = workers[0].stderr.readline()
            assert line, f"worker 0 ended before training:\n{log[-3000:]}"
            log += line
        time.sleep(2)
        sent = time.monotonic()
        workers[0].send_signal(signal.SIGTERM)
        _, err = workers[0].communicate(timeout=120)
        assert time.monotonic() - sent < 60
    finally:
        for worker in workers:
            worker.kill()
            worker.communicate()
    assert workers[0].returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("interrupted: run the same command with --resume")
