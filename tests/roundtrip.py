"""The one save/load round trip every path that produces a model goes through in the tests (train, repair, export).

`assert_round_trip(path, reference)` loads the artifact the way the project's users do (`celeba.model.load_model`
for a .keras file, `celeba.export.load_exported` for .tflite/.onnx), checks the labels it carries, and compares
its probabilities with a reference Keras model held in memory on the same preprocessed sample images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from celeba.data import SAMPLE_DIR, load_index, make_dataset, split


def sample_images(image_size: int, n: int = 8) -> np.ndarray:
    """The first `n` test images of the embedded sample, through the evaluation pipeline at `image_size` px."""
    rows = split(load_index(SAMPLE_DIR), "test", n)
    return np.concatenate([x.numpy() for x, _ in make_dataset(rows, [], image_size, n, training=False)])


def assert_round_trip(
    path: Path,
    reference,
    images: np.ndarray | None = None,
    *,
    labels: Sequence[str] | None = None,
    atol: float = 1e-5,
) -> np.ndarray:
    """Load `path`, compare its probabilities with `reference` (a Keras model) within `atol`; the loaded model's
    probabilities are returned for further checks."""
    from celeba.exported import load_exported
    from celeba.model import load_model, model_image_size
    from celeba.runcard import RunCard, card_path

    path = Path(path)
    assert path.is_file(), f"{path} was not written"
    if images is None:
        images = sample_images(model_image_size(reference))
    expected = np.asarray(reference.predict(images, verbose=0))
    if path.suffix == ".keras":
        loaded, loaded_labels = load_model(path)
        got = np.asarray(loaded.predict(images, verbose=0))
    else:
        got = np.asarray(load_exported(path)(images))
        loaded_labels = tuple(RunCard.load(card_path(path)).config["labels"])
    if labels is not None:
        assert tuple(loaded_labels) == tuple(labels), f"{path}: labels {loaded_labels}, expected {tuple(labels)}"
    assert got.shape == expected.shape, f"{path}: output shape {got.shape}, expected {expected.shape}"
    np.testing.assert_allclose(got, expected, atol=atol, err_msg=f"{path} does not predict what was saved")
    return got
