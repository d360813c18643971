"""MobileNetV2 backbone + a small sigmoid multi-label head, and loading a saved model with its labels."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import keras

from celeba.config import resolve_model
from celeba.runcard import RunCard, card_path

log = logging.getLogger(__name__)
HEAD_LAYERS = ("scale", "embedding", "head_dense", "head_bn", "head_dropout", "predictions")
FEATURE_LAYER = "out_relu"  # last convolutional activation of MobileNetV2: where Grad-CAM looks
IMAGENET_SIZES = (96, 128, 160, 192, 224)


class WeightsError(RuntimeError):
    """The backbone weights could not be had; the message says what to pass instead."""


def _backbone(inputs, weights: str):
    spec = None if weights.lower() == "none" else weights
    if spec not in (None, "imagenet") and not Path(spec).is_file():
        raise WeightsError(f"{spec}: weights file not found (pass --weights imagenet, none, or a local .h5)")
    size = inputs.shape[1]
    if spec == "imagenet" and size not in IMAGENET_SIZES:
        raise WeightsError(f"--image-size {size}: ImageNet weights exist only for sizes {IMAGENET_SIZES}")
    try:
        return keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights=spec,
                                                 input_tensor=inputs, pooling=None)
    except Exception as exc:
        if spec != "imagenet":
            raise WeightsError(f"{spec}: could not load MobileNetV2 weights ({exc})") from exc
        raise WeightsError(
            f"could not download the ImageNet weights for MobileNetV2 ({type(exc).__name__}: {exc}). "
            f"Offline? Pass --weights PATH/TO/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}_no_top.h5 "
            f"or --weights none to train from scratch.") from exc


def build_model(n_labels: int, image_size: int = 128, weights: str = "imagenet",
                dense_units: int = 128, dropout: float = 0.3) -> keras.Model:
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
    return [layer for layer in model.layers
            if layer.name not in head and not isinstance(layer, keras.layers.InputLayer)]


def set_backbone_trainable(model: keras.Model, trainable: bool, freeze_batchnorm: bool = True) -> None:
    """Freeze the backbone for the head phase; when fine-tuning pretrained weights keep BatchNorm frozen."""
    for layer in backbone_layers(model):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = trainable and not (is_bn and freeze_batchnorm)


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


def load_model(model_path: Path, labels: Sequence[str] | None = None) -> tuple[keras.Model, tuple[str, ...]]:
    """Load a saved `.keras` model and its label names (from the run card beside it, or `labels`).

    A relative path not found from the working directory is looked up in the repository (`resolve_model`);
    a model whose card shows chance-level validation ROC-AUC is loaded with a warning.
    """
    import celeba.losses  # noqa: F401  (registers the weighted loss for deserialization)

    model_path = resolve_model(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: model file not found (train one with `celeba train`)")
    card = RunCard.load(model_path) if labels is None or card_path(model_path).is_file() else None
    if card is not None and card.quality_warning():
        log.warning("%s", card.quality_warning())
    with without_optimizer_warnings():
        model = keras.models.load_model(model_path)
    labels = tuple(labels if labels is not None else card.labels)
    if model.output_shape[-1] != len(labels):
        raise ValueError(f"{model_path}: model has {model.output_shape[-1]} outputs but labels are {labels}")
    return model, labels
