"""Tensorleap integration: code-loader's decorators over the `celeba` package, and nothing else.

Every encoder, loss, metric and visualizer calls the package, so Tensorleap sees exactly the pixels,
labels and losses that training saw. Settings (environment variables):

- CELEBA_DATA_DIR: a CelebA folder in the official layout; default: the embedded sample.
- CELEBA_LEAP_MODEL: the `.keras` model (its run card beside it gives the labels and image size);
  default: models/mobilenetv2-bce.keras.
- TL_DISABLE_ANALYTICS=true: keeps code-loader from sending usage events (each import stalls offline).

No `from __future__ import annotations` here: code-loader reads the visualizers' return annotations
as real classes.
"""

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np
import pandas as pd
from code_loader.contract.datasetclasses import PredictionTypeHandler, PreprocessResponse
from code_loader.contract.enums import DatasetMetadataType, DataStateType, LeapDataType, MetricDirection
from code_loader.contract.visualizer_classes import LeapHorizontalBar, LeapImage, LeapImageWithHeatmap
from code_loader.inner_leap_binder.leapbinder_decorators import (
    tensorleap_custom_loss, tensorleap_custom_metric, tensorleap_custom_visualizer, tensorleap_gt_encoder,
    tensorleap_input_encoder, tensorleap_integration_test, tensorleap_load_model, tensorleap_metadata,
    tensorleap_preprocess)

from celeba import data, image_stats, losses, metrics, saliency
from celeba.config import TrainConfig
from celeba.model import card_path
from celeba.model import load_model as load_keras_model

ROOT = Path(__file__).resolve().parent
DATA_DIR_ENV = "CELEBA_DATA_DIR"
MODEL_ENV = "CELEBA_LEAP_MODEL"
DEFAULT_MODEL = ROOT / "models" / "mobilenetv2-bce.keras"
STATES = {"train": DataStateType.training, "validation": DataStateType.validation, "test": DataStateType.test}
CONFUSION_DIRECTIONS = {"accuracy": MetricDirection.Upward, "tp": MetricDirection.Upward,
                        "tn": MetricDirection.Upward, "fp": MetricDirection.Downward, "fn": MetricDirection.Downward}


# --------------------------------------------------------------------------- settings


def data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or data.SAMPLE_DIR)


def model_path() -> Path:
    return Path(os.environ.get(MODEL_ENV) or DEFAULT_MODEL)


def _model_config(path: Path) -> Tuple[Tuple[str, ...], int]:
    """(labels, image size) from the model's run card; the training defaults when there is none yet."""
    defaults = TrainConfig()
    card = card_path(path)
    if not card.is_file():
        return tuple(defaults.labels), defaults.image_size
    config = json.loads(card.read_text())["config"]
    return tuple(config.get("labels", defaults.labels)), int(config.get("image_size", defaults.image_size))


# Fixed at import: code-loader needs the label names when the decorators run.
LABELS, IMAGE_SIZE = _model_config(model_path())


# --------------------------------------------------------------------------- the index, once per process


@lru_cache(maxsize=4)
def load_index(folder: Path) -> pd.DataFrame:
    """`celeba.data.load_index` (pose proxies included where the landmarks file exists), once per folder."""
    return data.load_index(folder)


@dataclass(frozen=True)
class Samples:
    """One partition's rows and an id -> row map: every encoder finds its sample in O(1)."""

    rows: pd.DataFrame
    position: Dict[str, int]

    @classmethod
    def of(cls, rows: pd.DataFrame) -> "Samples":
        rows = rows.reset_index(drop=True)
        return cls(rows, {image_id: i for i, image_id in enumerate(rows["image_id"])})

    def row(self, sample_id: str) -> pd.DataFrame:
        """The sample as a one-row frame (what the package's frame-based helpers take)."""
        i = self.position[sample_id]
        return self.rows.iloc[i:i + 1]


def response(rows: pd.DataFrame, state: DataStateType) -> PreprocessResponse:
    return PreprocessResponse(sample_ids=rows["image_id"].astype(str).tolist(), state=state, data=Samples.of(rows))


def _row(sample_id: str, preprocess: PreprocessResponse) -> pd.DataFrame:
    return preprocess.data.row(sample_id)


@lru_cache(maxsize=4)
def _weighted_bce(folder: Path):
    """The weighted BCE training would build: class-balanced weights from this folder's train partition."""
    return losses.make_loss("weighted-bce", data.labels_array(data.split(load_index(folder), "train"), LABELS))


# --------------------------------------------------------------------------- dataset


@tensorleap_preprocess()
def preprocess() -> List[PreprocessResponse]:
    try:
        index = load_index(data_dir())
    except data.CelebADataError as exc:
        raise data.CelebADataError(f"{exc}; the integration reads its data folder from {DATA_DIR_ENV}") from None
    return [response(data.split(index, partition), state) for partition, state in STATES.items()]


@tensorleap_input_encoder("image", channel_dim=-1)
def input_image(sample_id: str, preprocess: PreprocessResponse) -> np.ndarray:
    """float32 HxWx3 in [0, 255]: `celeba.data.load_image`, the preprocessing training uses."""
    path = _row(sample_id, preprocess)["path"].iat[0]
    return data.load_image(path, IMAGE_SIZE).numpy()


@tensorleap_gt_encoder("labels")
def gt_labels(sample_id: str, preprocess: PreprocessResponse) -> np.ndarray:
    return data.labels_array(_row(sample_id, preprocess), LABELS)[0]


@tensorleap_metadata("attribute")
def metadata_attributes(sample_id: str, preprocess: PreprocessResponse) -> Dict[str, int]:
    """All 40 CelebA attributes (0/1), to slice results by any of them."""
    row = _row(sample_id, preprocess)
    return {name: int(row[name].iat[0]) for name in data.ATTRIBUTES}


_SAMPLE_TYPES = {"identity": DatasetMetadataType.int, "pose_yaw": DatasetMetadataType.float,
                 "pose_pitch": DatasetMetadataType.float, "pose_roll": DatasetMetadataType.float,
                 "eye_distance": DatasetMetadataType.float}


@tensorleap_metadata("sample", _SAMPLE_TYPES)
def metadata_sample(sample_id: str, preprocess: PreprocessResponse) -> Dict[str, Union[str, int, float, None]]:
    """Male x Young cohort, partition, and identity / pose proxies where those CelebA files exist."""
    row = _row(sample_id, preprocess)
    values = {"cohort": str(metrics.cohort_names(row).iat[0]), "partition": str(row["partition"].iat[0])}
    for name, kind in _SAMPLE_TYPES.items():
        if name in row.columns:
            value = row[name].iat[0]
            values[name] = None if pd.isna(value) else (int(value) if kind is DatasetMetadataType.int else float(value))
    return values


@tensorleap_metadata("image")
def metadata_image(sample_id: str, preprocess: PreprocessResponse) -> Dict[str, float]:
    """Mean luminance (lighting / skin-tone proxy), contrast, sharpness (Laplacian variance), file_kb."""
    return image_stats.file_statistics(_row(sample_id, preprocess)["path"].iat[0])


# --------------------------------------------------------------------------- model, losses, metrics


@lru_cache(maxsize=2)
def keras_model(path: Path):
    model, labels = load_keras_model(path)
    if labels != LABELS:
        raise ValueError(f"{path}: model labels {labels} differ from the integration's {LABELS}")
    return model


@tensorleap_load_model([PredictionTypeHandler("attributes", list(LABELS), channel_dim=-1)])
def load_model():
    return keras_model(model_path())


def _per_sample(loss, gt: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """A Keras loss, unreduced: one value per sample (the platform hands float16, Keras wants float32)."""
    import tensorflow as tf

    values = loss.call(tf.constant(gt, tf.float32), tf.constant(prediction, tf.float32))
    return np.asarray(values, dtype=np.float32)


@tensorleap_custom_loss("bce")
def bce_loss(gt: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    return _per_sample(losses.make_loss("bce"), gt, prediction)


@tensorleap_custom_loss("weighted_bce")
def weighted_bce_loss(gt: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    return _per_sample(_weighted_bce(data_dir()), gt, prediction)


@tensorleap_custom_metric("label", direction={f"{label}_{kind}": direction for label in LABELS
                                              for kind, direction in CONFUSION_DIRECTIONS.items()})
def label_confusion(gt: np.ndarray, prediction: np.ndarray) -> Dict[str, np.ndarray]:
    """Per sample and label: accuracy and TP/TN/FP/FN as 0/1, from `celeba.metrics.sample_confusion`."""
    confusion = metrics.sample_confusion(gt.astype(np.float32), prediction.astype(np.float32))
    return {f"{label}_{kind}": confusion[kind][:, j] for j, label in enumerate(LABELS)
            for kind in CONFUSION_DIRECTIONS}


# --------------------------------------------------------------------------- visualizers


def _single(array: np.ndarray) -> np.ndarray:
    """Drop the batch axis the platform and the integration test add."""
    array = np.asarray(array)
    return array[0] if array.ndim in (2, 4) else array


@tensorleap_custom_visualizer("image", LeapDataType.Image)
def image_visualizer(image: np.ndarray) -> LeapImage:
    return LeapImage(np.clip(_single(image), 0, 255).astype(np.uint8))


@tensorleap_custom_visualizer("labels_bar", LeapDataType.HorizontalBar)
def labels_visualizer(prediction: np.ndarray, gt: np.ndarray) -> LeapHorizontalBar:
    return LeapHorizontalBar(body=_single(prediction).astype(np.float32), labels=list(LABELS),
                             gt=_single(gt).astype(np.float32))


@lru_cache(maxsize=2)
def _gradcam_model(path: Path):
    return saliency.gradcam_model(keras_model(path))


@tensorleap_custom_visualizer("gradcam", LeapDataType.ImageWithHeatmap)
def gradcam_visualizer(image: np.ndarray) -> LeapImageWithHeatmap:
    """Grad-CAM of every label over the face (needs the model file where the visualizer runs)."""
    image = np.clip(_single(image), 0, 255).astype(np.float32)  # antialiased resizing overshoots 255 a little
    model = keras_model(model_path())
    heatmaps = [saliency.gradcam(model, image[None], j, grad_model=_gradcam_model(model_path()))[0]
                for j in range(len(LABELS))]
    return LeapImageWithHeatmap(image=image, heatmaps=np.stack(heatmaps).astype(np.float32), labels=list(LABELS))


# --------------------------------------------------------------------------- integration test


@tensorleap_integration_test()
def integration_test(sample_id: str, preprocess: PreprocessResponse) -> None:
    """Wire every encoder, metadata, loss, metric and visualizer the way the platform will."""
    image = input_image(sample_id, preprocess)
    gt = gt_labels(sample_id, preprocess)
    model = load_model()
    prediction = model(image)
    bce_loss(gt, prediction)
    weighted_bce_loss(gt, prediction)
    label_confusion(gt, prediction)
    image_visualizer(image)
    labels_visualizer(prediction, gt)
    gradcam_visualizer(image)
    metadata_attributes(sample_id, preprocess)
    metadata_sample(sample_id, preprocess)
    metadata_image(sample_id, preprocess)


if __name__ == "__main__":
    from leap_test import main

    raise SystemExit(main())
