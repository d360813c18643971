"""Shared fixtures: the embedded CelebA sample and one tiny model trained on it once per test session."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")  # code-loader would otherwise try to phone home
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") != "1":
    # Parallel workers: one TensorFlow compute thread and one op-scheduling thread each (inherited by the
    # subprocesses the tests start), so the workers share the cores instead of oversubscribing them. Set before
    # TensorFlow creates its thread pools.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import pytest  # noqa: E402

from celeba.data import SAMPLE_DIR  # noqa: E402


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE_DIR


def tiny_config(models: Path, name: str, **overrides):
    """A TrainConfig for a one-epoch smoke training from random weights on the embedded sample. Eager: tracing
    MobileNetV2's training step costs more than such a run trains (tests/test_train.py traces the project's step)."""
    from celeba.config import TrainConfig

    defaults = {"weights": "none", "epochs": 1, "check_images": False, "run_eagerly": True}
    return TrainConfig(**{**defaults, "models_dir": models, "name": name, **overrides})


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 64 px MobileNetV2 (random init) trained 1 epoch on 32 sample images; saved .keras with its run card.

    Trained once per test run: parallel workers share it through the run's common temporary folder, the first to
    need it training it under a file lock while the others wait. No test writes beside it.
    """
    import fcntl

    from celeba.train import train

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # every worker's basetemp lies in this run's folder
    models = shared / "tiny-model"
    with open(shared / "tiny-model.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (models / "tiny.keras").is_file():
            models.mkdir(exist_ok=True)
            train(tiny_config(models, "tiny", image_size=64, limit=32, batch_size=16))
    return models / "tiny.keras"


@contextmanager
def loopback_server(app) -> Iterator[str]:
    """A real uvicorn server for `app` on a free 127.0.0.1 port, in a thread; yields its URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start in 30 s"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture(scope="session")
def face_jpeg(sample_dir) -> bytes:
    """One real CelebA JPEG of the sample (a face the detector finds)."""
    from celeba.data import image_dir

    return sorted(image_dir(sample_dir).glob("*.jpg"))[1].read_bytes()


@pytest.fixture(scope="session")
def lopsided_model(tmp_path_factory) -> Path:
    """A 64 px model whose outputs depend on where things are in the image (a random, untrained conv + dense), so
    it is not mirror-invariant; labels embedded, no run card. For checks that the tiny trained model, whose
    outputs hardly move from image to image, cannot fail."""
    import keras

    from celeba.model import embed_labels

    keras.utils.set_random_seed(3)
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(4, 5, strides=4, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    outputs = keras.layers.Dense(2, activation="sigmoid")(keras.layers.Flatten()(x))
    path = tmp_path_factory.mktemp("lopsided") / "lopsided.keras"
    keras.Model(inputs, outputs).save(path)
    embed_labels(path, ("Male", "Young"))
    return path
