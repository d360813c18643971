"""Tensorleap integration: code-loader's decorators over the `celeba` package, and nothing else.

Every encoder, loss and metric calls the package, so Tensorleap sees exactly the pixels, labels and
losses that training saw. Settings live in `project_config.yaml` beside this file (uploaded with it);
two environment variables override them for local runs only:

- CELEBA_DATA_DIR: a CelebA folder in the official layout, instead of `data_root` on the data volume.
- CELEBA_LEAP_MODEL: the ONNX model `load_model` opens locally, instead of the config's `model`
  (on the platform the pushed model is used and this function's body does not run).

Importing this file needs numpy, pandas, PyYAML, OpenCV, scikit-learn and code-loader only: TensorFlow is
imported by the first call that needs it (the input encoder, the losses), not by metadata-only workers.
TL_DISABLE_ANALYTICS=true keeps code-loader from sending usage events (each import stalls offline).

No `from __future__ import annotations` here: code-loader reads the visualizers' return annotations
as real classes.
"""

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from code_loader.contract.datasetclasses import PredictionTypeHandler, PreprocessResponse
from code_loader.contract.enums import DatasetMetadataType, DataStateType, LeapDataType, MetricDirection
from code_loader.contract.visualizer_classes import LeapHorizontalBar, LeapImage
from code_loader.inner_leap_binder.leapbinder_decorators import (
    tensorleap_custom_loss,
    tensorleap_custom_metric,
    tensorleap_custom_visualizer,
    tensorleap_gt_encoder,
    tensorleap_input_encoder,
    tensorleap_integration_test,
    tensorleap_load_model,
    tensorleap_metadata,
    tensorleap_preprocess,
)

from celeba import data, image_stats, metrics

ROOT = Path(__file__).resolve().parent
CONFIG_FILE = ROOT / "project_config.yaml"
DATA_DIR_ENV = "CELEBA_DATA_DIR"
MODEL_ENV = "CELEBA_LEAP_MODEL"
STATES = {"train": DataStateType.training, "validation": DataStateType.validation, "test": DataStateType.test}


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ProjectConfig:
    """`project_config.yaml`: what the platform cannot learn from the uploaded model file alone."""

    data_root: str = "celeba"
    labels: tuple[str, ...] = ("Male", "Young")
    image_size: int = 96
    class_weights: dict[str, dict[str, float]] | None = None  # label -> {positive: w, negative: w}
    sample_limit_per_split: int | None = None
    model: str = "models/celeba16k-bce-float32.onnx"
    path: Path = field(default=CONFIG_FILE, compare=False)

    @classmethod
    def read(cls, path: Path = CONFIG_FILE) -> "ProjectConfig":
        """Parse and check the file; every problem names the file and the setting."""
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise data.CelebADataError(f"{path}: cannot read the integration settings ({exc})") from None
        unknown = sorted(set(raw) - {f for f in cls.__dataclass_fields__ if f != "path"})
        if unknown:
            raise data.CelebADataError(f"{path}: unknown setting(s) {unknown}")
        config = cls(**{**raw, "path": Path(path)})
        try:
            labels = data.check_labels(tuple(config.labels))
        except data.CelebADataError as exc:
            raise data.CelebADataError(f"{path}: labels: {exc}") from None
        if not isinstance(config.image_size, int) or config.image_size < 32:
            raise data.CelebADataError(f"{path}: image_size must be an integer >= 32, got {config.image_size!r}")
        limit = config.sample_limit_per_split
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise data.CelebADataError(
                f"{path}: sample_limit_per_split must be a positive integer or null, got {limit!r}"
            )
        weights = config.class_weights
        if weights is not None and (
            set(weights) != set(labels) or any(set(w) != {"positive", "negative"} for w in weights.values())
        ):
            raise data.CelebADataError(
                f"{path}: class_weights needs {{positive: w, negative: w}} for exactly "
                f"the labels {list(labels)}, got {weights}"
            )
        return cls(**{**raw, "labels": labels, "path": Path(path)})

    def pos_neg_weights(self) -> tuple[list[float], list[float]]:
        """The weights in label order, as `celeba.losses.WeightedBinaryCrossentropy` takes them."""
        assert self.class_weights is not None
        return (
            [float(self.class_weights[label]["positive"]) for label in self.labels],
            [float(self.class_weights[label]["negative"]) for label in self.labels],
        )


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no")


def data_dir_candidates(root: str, environ: Mapping[str, str] = os.environ) -> list[Path]:
    """Where a data root is looked for, in order: as given if absolute; else `/nfs/<root>` on the cloud
    platform (IS_CLOUD); else under every GENERIC_HOST_PATH entry (':'-separated, on-premise volumes);
    else `~/tensorleap/data/<root>`."""
    if Path(root).is_absolute():
        return [Path(root)]
    if _flag(environ.get("IS_CLOUD")):
        return [Path("/nfs") / root]
    hosts = [entry for entry in environ.get("GENERIC_HOST_PATH", "").split(":") if entry]
    if hosts:
        return [Path(entry) / root for entry in hosts]
    return [Path.home() / "tensorleap" / "data" / root]


def data_dir(config: ProjectConfig | None = None, environ: Mapping[str, str] = os.environ) -> Path:
    """The CelebA folder: CELEBA_DATA_DIR (local override), else the first existing data-root candidate."""
    if environ.get(DATA_DIR_ENV):
        return Path(environ[DATA_DIR_ENV])
    config = config or CONFIG
    candidates = data_dir_candidates(config.data_root, environ)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise data.CelebADataError(
        f"CelebA folder {config.data_root!r} (data_root in {config.path.name}) not found; tried "
        f"{', '.join(str(c) for c in candidates)}. Put CelebA (official layout) on the data volume under that "
        f"name, or for a local run set {DATA_DIR_ENV}"
    )


_model_override: Path | None = None


def use_model(path: Path | None) -> None:
    """Run `load_model` on this file (leap_test.py --model); None: back to CELEBA_LEAP_MODEL / the config."""
    global _model_override
    _model_override = None if path is None else Path(path)


def model_path() -> Path:
    """The ONNX model for local runs: `use_model`, else CELEBA_LEAP_MODEL, else the config's `model`."""
    if _model_override is not None:
        return _model_override
    configured = Path(os.environ.get(MODEL_ENV) or CONFIG.model)
    return configured if configured.is_absolute() else ROOT / configured


# Fixed at import: code-loader needs the label names when the decorators run.
CONFIG = ProjectConfig.read()
LABELS = CONFIG.labels


# --------------------------------------------------------------------------- the index, once per process


@lru_cache(maxsize=4)
def load_index(folder: Path) -> pd.DataFrame:
    """`celeba.data.load_index` plus the raw landmark coordinates where the landmarks file exists."""
    index = data.load_index(folder)
    landmarks_file = data._find_optional(Path(folder), data.LANDMARKS_FILE)
    if landmarks_file is not None:
        index = index.join(data.read_landmarks(landmarks_file), on="image_id")
    return index


@dataclass(frozen=True)
class Samples:
    """One partition's rows and an id -> row map: every encoder finds its sample in O(1)."""

    rows: pd.DataFrame
    position: dict[str, int]

    @classmethod
    def of(cls, rows: pd.DataFrame) -> "Samples":
        rows = rows.reset_index(drop=True)
        return cls(rows, {image_id: i for i, image_id in enumerate(rows["image_id"])})

    def row(self, sample_id: str) -> pd.DataFrame:
        """The sample as a one-row frame (what the package's frame-based helpers take)."""
        i = self.position[sample_id]
        return self.rows.iloc[i : i + 1]


def response(rows: pd.DataFrame, state: DataStateType) -> PreprocessResponse:
    return PreprocessResponse(sample_ids=rows["image_id"].astype(str).tolist(), state=state, data=Samples.of(rows))


def _row(sample_id: str, preprocess: PreprocessResponse) -> pd.DataFrame:
    return preprocess.data.row(sample_id)


# --------------------------------------------------------------------------- dataset


@tensorleap_preprocess()
def preprocess() -> list[PreprocessResponse]:
    index = load_index(data_dir())
    return [
        response(data.split(index, partition, CONFIG.sample_limit_per_split), state)
        for partition, state in STATES.items()
    ]


@tensorleap_input_encoder("image", channel_dim=-1)
def input_image(sample_id: str, preprocess: PreprocessResponse) -> np.ndarray:
    """float32 HxWx3 in [0, 255]: `celeba.data.load_image`, the preprocessing training uses."""
    path = _row(sample_id, preprocess)["path"].iat[0]
    return data.load_image(path, CONFIG.image_size).numpy()


@tensorleap_gt_encoder("labels")
def gt_labels(sample_id: str, preprocess: PreprocessResponse) -> np.ndarray:
    return data.labels_array(_row(sample_id, preprocess), LABELS)[0]


@tensorleap_metadata("attribute")
def metadata_attributes(sample_id: str, preprocess: PreprocessResponse) -> dict[str, int]:
    """All 40 CelebA attributes (0/1), to slice results by any of them."""
    row = _row(sample_id, preprocess)
    return {name: int(row[name].iat[0]) for name in data.ATTRIBUTES}


_POSE = ("pose_yaw", "pose_pitch", "pose_roll", "eye_distance")
_SAMPLE_TYPES = {
    "cohort": DatasetMetadataType.string,
    "identity": DatasetMetadataType.string,
    **{name: DatasetMetadataType.float for name in _POSE + data.LANDMARKS},
}


@tensorleap_metadata("sample", _SAMPLE_TYPES)
def metadata_sample(sample_id: str, preprocess: PreprocessResponse) -> dict[str, str | float | None]:
    """Male x Young cohort; where those CelebA files exist, the identity (a category: a string), pose proxies
    and the raw landmark pixel coordinates. A sample missing from a present file gets None."""
    row = _row(sample_id, preprocess)
    values: dict[str, str | float | None] = {"cohort": str(metrics.cohort_names(row).iat[0])}
    if "identity" in row.columns:
        identity = row["identity"].iat[0]
        values["identity"] = None if pd.isna(identity) else str(int(identity))
    for name in _POSE + data.LANDMARKS:
        if name in row.columns:
            value = row[name].iat[0]
            values[name] = None if pd.isna(value) else float(value)
    return values


@tensorleap_metadata("image")
def metadata_image(sample_id: str, preprocess: PreprocessResponse) -> dict[str, float]:
    """Mean luminance (lighting / skin-tone proxy), contrast, sharpness (Laplacian variance), file_kb."""
    return image_stats.file_statistics(_row(sample_id, preprocess)["path"].iat[0])


# --------------------------------------------------------------------------- model


def check_model(session, config: ProjectConfig, path: Path) -> None:
    """The ONNX model must take `image_size` px and give one output per label; where its metadata (written by
    `poetry run export --format onnx`) names labels or class weights, they must be the config's."""
    shape, outputs = session.get_inputs()[0].shape, session.get_outputs()[0].shape
    problems = []
    if shape[1:] != [config.image_size, config.image_size, 3]:
        problems.append(
            f"takes input {shape[1:]}, the config says image_size {config.image_size} "
            f"([{config.image_size}, {config.image_size}, 3])"
        )
    if outputs[-1] != len(config.labels):
        problems.append(f"has {outputs[-1]} outputs, the config names {len(config.labels)} labels")
    meta = session.get_modelmeta().custom_metadata_map
    if "labels" in meta and tuple(json.loads(meta["labels"])) != config.labels:
        problems.append(f"was trained on labels {json.loads(meta['labels'])}, the config says {list(config.labels)}")
    trained_weights = json.loads(meta.get("class_weights", "null"))
    if trained_weights is not None and trained_weights != config.class_weights:
        problems.append(f"was trained with class_weights {trained_weights}, the config says {config.class_weights}")
    if problems:
        raise ValueError(f"{path}: does not match {config.path.name}: " + "; ".join(problems))


@tensorleap_load_model([PredictionTypeHandler("attributes", list(LABELS), channel_dim=-1)])
def load_model():
    """The pushed model as the platform runs it: an onnxruntime session over the ONNX export."""
    import onnxruntime as ort

    path = model_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: ONNX model not found (make it with `poetry run export --model "
            f"models/<model>.keras --format onnx`)"
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check_model(session, CONFIG, path)
    return session


# --------------------------------------------------------------------------- losses and metrics


def _per_sample(loss, gt: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """A Keras loss, unreduced: one value per sample (the platform hands float16, Keras wants float32)."""
    values = loss.call(np.asarray(gt, np.float32), np.asarray(prediction, np.float32))
    return np.asarray(values, dtype=np.float32)


@tensorleap_custom_loss("bce")
def bce_loss(gt: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    from celeba import losses  # Keras: imported where a loss runs, not by every worker

    return _per_sample(losses.make_loss("bce"), gt, prediction)


if CONFIG.class_weights is not None:

    @tensorleap_custom_loss("weighted_bce")
    def weighted_bce_loss(gt: np.ndarray, prediction: np.ndarray) -> np.ndarray:
        """Training's weighted BCE with the class weights of project_config.yaml (the model's training set)."""
        from celeba import losses

        return _per_sample(losses.WeightedBinaryCrossentropy(*CONFIG.pos_neg_weights()), gt, prediction)


# Per label: 0/1 per sample; conditional rates (NaN where the condition does not hold, so a cohort's mean is
# its recall, miss rate, specificity, fall-out); confidence: the probability's distance from the threshold,
# scaled to [0, 1] (|2p - 1| at 0.5); margin: the same, signed + when right and - when wrong, so the most
# negative margins are the confident mistakes.
METRIC_DIRECTIONS = {
    "accuracy": MetricDirection.Upward,
    "tp": MetricDirection.Upward,
    "tn": MetricDirection.Upward,
    "fp": MetricDirection.Downward,
    "fn": MetricDirection.Downward,
    "recall": MetricDirection.Upward,
    "miss_rate": MetricDirection.Downward,
    "specificity": MetricDirection.Upward,
    "fall_out": MetricDirection.Downward,
    "confidence": MetricDirection.Upward,
    "margin": MetricDirection.Upward,
}


def label_metrics(gt: np.ndarray, prediction: np.ndarray, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """{kind: (samples, labels) float32} for every kind of METRIC_DIRECTIONS."""
    gt, prediction = np.asarray(gt, np.float32), np.asarray(prediction, np.float32)
    values = metrics.sample_confusion(gt, prediction, threshold)
    positive = gt >= 0.5
    values["recall"] = np.where(positive, values["tp"], np.nan)
    values["miss_rate"] = np.where(positive, values["fn"], np.nan)
    values["specificity"] = np.where(positive, np.nan, values["tn"])
    values["fall_out"] = np.where(positive, np.nan, values["fp"])
    signed = (prediction - threshold) / np.where(prediction >= threshold, 1 - threshold, threshold)
    values["confidence"] = np.abs(signed)
    values["margin"] = np.where(positive, signed, -signed)
    return {kind: values[kind].astype(np.float32) for kind in METRIC_DIRECTIONS}


@tensorleap_custom_metric(
    "label",
    direction={f"{label}_{kind}": direction for label in LABELS for kind, direction in METRIC_DIRECTIONS.items()},
)
def label_metric(gt: np.ndarray, prediction: np.ndarray) -> dict[str, np.ndarray]:
    """Per sample and label: `<label>_<kind>` for every kind of METRIC_DIRECTIONS."""
    values = label_metrics(gt, prediction)
    return {f"{label}_{kind}": values[kind][:, j] for j, label in enumerate(LABELS) for kind in METRIC_DIRECTIONS}


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
    return LeapHorizontalBar(
        body=_single(prediction).astype(np.float32), labels=list(LABELS), gt=_single(gt).astype(np.float32)
    )


# --------------------------------------------------------------------------- integration test


@tensorleap_integration_test()
def integration_test(sample_id: str, preprocess: PreprocessResponse) -> None:
    """Wire every encoder, metadata, loss, metric and visualizer the way the platform will."""
    image = input_image(sample_id, preprocess)
    gt = gt_labels(sample_id, preprocess)
    model = load_model()
    prediction = model.run(None, {model.get_inputs()[0].name: image})[0]
    bce_loss(gt, prediction)
    if CONFIG.class_weights is not None:
        weighted_bce_loss(gt, prediction)
    label_metric(gt, prediction)
    image_visualizer(image)
    labels_visualizer(prediction, gt)
    metadata_attributes(sample_id, preprocess)
    metadata_sample(sample_id, preprocess)
    metadata_image(sample_id, preprocess)


if __name__ == "__main__":
    from leap_test import main

    raise SystemExit(main())
