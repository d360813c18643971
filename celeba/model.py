"""MobileNetV2 backbone + a small sigmoid multi-label head, and loading a saved model with its labels."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from celeba.config import resolve_model
from celeba.data import CelebADataError, make_dataset
from celeba.runcard import RunCard, card_path
from celeba.runtime import keras_verbose

log = logging.getLogger(__name__)
HEAD_LAYERS = ("scale", "embedding", "head_dense", "head_bn", "head_dropout", "predictions")
FEATURE_LAYER = "out_relu"  # last convolutional activation of MobileNetV2: where Grad-CAM looks
IMAGENET_SIZES = (96, 128, 160, 192, 224)


class WeightsError(RuntimeError):
    """The backbone weights could not be had; the message says what to pass instead."""


class ModelFileError(CelebADataError):
    """A model file or its card that cannot be used; the message names the file and says why."""


#: Entry inside the `.keras` zip that holds the label names: the model and its labels are one file.
LABELS_ENTRY = "celeba_labels.json"


def _backbone(inputs: Any, weights: str) -> Any:
    spec = None if weights.lower() == "none" else weights
    if spec is not None and spec != "imagenet" and not Path(spec).is_file():
        raise WeightsError(f"{spec}: weights file not found (pass --weights imagenet, none, or a local .h5)")
    size = inputs.shape[1]
    if spec == "imagenet" and size not in IMAGENET_SIZES:
        raise WeightsError(f"--image-size {size}: ImageNet weights exist only for sizes {IMAGENET_SIZES}")
    try:
        return keras.applications.MobileNetV2(
            input_shape=(size, size, 3), include_top=False, weights=spec, input_tensor=inputs, pooling=None
        )
    except Exception as exc:
        if spec != "imagenet":
            raise WeightsError(f"{spec}: could not load MobileNetV2 weights ({exc})") from exc
        raise WeightsError(
            f"could not download the ImageNet weights for MobileNetV2 ({type(exc).__name__}: {exc}). "
            f"Offline? Pass --weights PATH/TO/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}_no_top.h5 "
            f"or --weights none to train from scratch."
        ) from exc


def build_model(
    n_labels: int, image_size: int = 128, weights: str = "imagenet", dense_units: int = 128, dropout: float = 0.3
) -> keras.Model:
    """Inputs are float32 pixels in [0, 255]: the [-1, 1] scaling lives inside the model, once."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inputs)
    backbone = _backbone(scaled, weights)
    if weights.lower() == "none":
        # MobileNetV2's BatchNorm momentum (0.999) suits fine-tuning; from scratch its moving statistics lag
        # thousands of steps behind the weights and inference-mode outputs collapse to a constant.
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(backbone.output)
    x = keras.layers.Dense(dense_units, use_bias=False, name="head_dense")(x)
    x = keras.layers.BatchNormalization(name="head_bn")(x)
    x = keras.layers.Activation("relu", name="head_relu")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(n_labels, activation="sigmoid", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name="mobilenetv2_celeba")


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    head = set(HEAD_LAYERS) | {"head_relu"}
    return [
        layer for layer in model.layers if layer.name not in head and not isinstance(layer, keras.layers.InputLayer)
    ]


def set_backbone_trainable(
    model: keras.Model, trainable: bool, freeze_batchnorm: bool = True, last: int | None = None
) -> None:
    """Freeze the backbone for the head phase; when fine-tuning pretrained weights keep BatchNorm frozen.

    `last`: only the backbone's last N layers become trainable (shallow fine-tuning keeps the early, generic
    ImageNet filters as they are); None: all of them.
    """
    layers = backbone_layers(model)
    first_trainable = 0 if last is None else max(0, len(layers) - last)
    for i, layer in enumerate(layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = trainable and i >= first_trainable and not (is_bn and freeze_batchnorm)


def flip_averaged(model: keras.Model) -> keras.Model:
    """Flip test-time augmentation: the mean of the model's probabilities for an image and its mirror image.

    Faces are close to mirror-symmetric and training flips them at random, so both views are in-distribution;
    averaging them costs a second forward pass (`--tta` in evaluate and predict; docs/results.md measures it).
    """
    inputs = keras.Input(model.input_shape[1:])
    mirrored = keras.ops.flip(inputs, axis=2)
    outputs = keras.ops.divide(keras.ops.add(model(inputs), model(mirrored)), 2.0)
    return keras.Model(inputs, outputs, name=f"{model.name}_flip_tta")


def embedding_model(model: keras.Model) -> keras.Model:
    """Image -> pooled backbone embedding (for latent-space analysis)."""
    return keras.Model(model.inputs, model.get_layer("embedding").output)


@contextlib.contextmanager
def without_optimizer_warnings() -> Iterator[None]:
    """Saved models keep their loss but not their optimizer state, by design: Keras warns when loading them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        yield


def model_image_size(model: keras.Model) -> int:
    """The square input side a saved model expects (its images must be preprocessed to it)."""
    return int(model.input_shape[1])


def embed_labels(model_path: Path, labels: Sequence[str]) -> None:
    """Add the label names to a saved `.keras` file (Keras ignores entries it does not know)."""
    with zipfile.ZipFile(model_path, "a") as archive:
        archive.writestr(LABELS_ENTRY, json.dumps({"labels": list(labels)}))


def embedded_labels(model_path: Path) -> tuple[str, ...] | None:
    """The labels saved inside a `.keras` file, or None for a model saved before they were."""
    try:
        with zipfile.ZipFile(model_path) as archive:
            if LABELS_ENTRY not in archive.namelist():
                return None
            return tuple(json.loads(archive.read(LABELS_ENTRY))["labels"])
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ModelFileError(f"{model_path}: not a Keras model file, or a truncated one ({exc})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{model_path}: malformed {LABELS_ENTRY} inside the model ({exc})") from None


def read_card(path: Path) -> dict:
    """A card (JSON object), with errors that name the file."""
    try:
        card = json.loads(Path(path).read_text())
        if not isinstance(card, dict):
            raise ValueError("not a JSON object")
        return card
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise ModelFileError(f"{path}: malformed card ({exc})") from None


def model_labels(model_path: Path, card: RunCard | None) -> tuple[str, ...]:
    """The labels inside the model file, checked against its run card; the card alone for older models."""
    inside, beside = embedded_labels(model_path), (tuple(card.labels) if card is not None else None)
    if inside is not None and beside is not None and inside != beside:
        raise ModelFileError(
            f"{model_path}: the model's labels {list(inside)} disagree with its run card "
            f"{card_path(model_path)} ({list(beside)}): the card belongs to another model"
        )
    labels = inside if inside is not None else beside
    if labels is None:
        raise ModelFileError(
            f"{card_path(model_path)}: run card not found, and {model_path} holds no labels of "
            f"its own (put the run card saved with the model beside it)"
        )
    return labels


def load_model(model_path: Path, labels: Sequence[str] | None = None) -> tuple[keras.Model, tuple[str, ...]]:
    """Load a saved `.keras` model and its label names (inside the model file, checked against the run card
    beside it; older models: from the card), or `labels`.

    A relative path not found from the working directory is looked up in the repository (`resolve_model`);
    a model whose card shows chance-level validation ROC-AUC is loaded with a warning.
    """
    import celeba.losses  # noqa: F401  (registers the weighted loss for deserialization)

    model_path = resolve_model(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: model file not found (train one with `celeba train`)")
    card = RunCard.load(model_path) if card_path(model_path).is_file() else None
    if card is not None and card.quality_warning():
        log.warning("%s", card.quality_warning())
    if labels is None:
        labels = model_labels(model_path, card)
    try:
        with without_optimizer_warnings():
            model = keras.models.load_model(model_path)
    except Exception as exc:  # Keras raises many types for a corrupt file; the file exists, so say what is wrong
        raise ModelFileError(
            f"{model_path}: cannot load the model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'corrupt file'})"
        ) from None
    labels = tuple(labels)
    if model.output_shape[-1] != len(labels):
        raise ModelFileError(f"{model_path}: model has {model.output_shape[-1]} outputs but labels are {labels}")
    return model, labels


def dataset_probabilities(
    model: keras.Model, rows: pd.DataFrame, labels: Sequence[str], image_size: int, batch_size: int = 64
) -> np.ndarray:
    """Probabilities of index rows (CelebA-style aligned images) through the tf.data pipeline, in order."""
    ds = make_dataset(rows, labels, image_size, batch_size, training=False)
    return model.predict(ds, verbose=keras_verbose())  # a list of arrays for a model with several outputs
