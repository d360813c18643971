"""Tensorleap integration: code-loader's decorators over the `celeba` package, and nothing else.

Every encoder, loss and metric calls the package, so Tensorleap sees exactly the pixels, labels and
losses that training saw. Settings live in `project_config.yaml` beside this file (uploaded with it);
three environment variables override them for local runs only:

- CELEBA_DATA_DIR: a CelebA folder in the official layout, instead of `data_root` on the data volume.
- CELEBA_PHOTOS_DIR: a labelled photo folder (images/, labels.csv, ...), instead of `photos.root` on the volume;
  its face crops are cached under ~/.cache, like `celeba train --photos` caches them.
- CELEBA_LEAP_MODEL: the ONNX model `load_model` opens locally, instead of the config's `model`
  (on the platform the pushed model is used and this function's body does not run).

Subsets: CelebA's train, validation and test partitions, plus (`photos` in the config) a labelled photo folder as
the `additional` subset, its faces found and aligned like `celeba predict` does it, once (cached crops).

Importing this file needs numpy, pandas, PyYAML, OpenCV, scikit-learn and code-loader only: TensorFlow is
imported by the first call that needs it (the index, the input encoder, the losses), not by metadata-only
workers. TL_DISABLE_ANALYTICS=true keeps code-loader from sending usage events (each import stalls offline).

No `from __future__ import annotations` here: code-loader reads the visualizers' return annotations
as real classes.
"""

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from code_loader.contract.datasetclasses import PredictionTypeHandler, PreprocessResponse
from code_loader.contract.enums import DatasetMetadataType, DataStateType, LeapDataType
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

from celeba import data, image_stats, metrics, sources
from leap_data import celeba_rows, population_columns, screen
from leap_data import excluded_images as excluded_images  # re-exported: the tests call binder.excluded_images
from leap_data import image_problem as image_problem
from leap_metrics import METRIC_DIRECTIONS, METRIC_INSIGHTS, label_metrics, per_sample, single
from leap_settings import ROOT, ProjectConfig, _error
from leap_settings import PhotoConfig as PhotoConfig

log = logging.getLogger("leap_binder")

DATA_DIR_ENV = "CELEBA_DATA_DIR"
PHOTOS_DIR_ENV = "CELEBA_PHOTOS_DIR"
MODEL_ENV = "CELEBA_LEAP_MODEL"
STATES = {"train": DataStateType.training, "validation": DataStateType.validation, "test": DataStateType.test}
#: The cloud platform's data mounts, tried in this order where they exist (IS_CLOUD set).
CLOUD_VOLUMES = (Path("/fsx"), Path("/nfs"))


# --------------------------------------------------------------------------- where the data is


def volume_roots(environ: Mapping[str, str] = os.environ) -> list[Path]:
    """The data volumes, in the order the hub integrations search them: with IS_CLOUD set and non-empty,
    /fsx then /nfs, each only where it exists; otherwise (or where neither exists) every GENERIC_HOST_PATH
    entry (':'-separated), then ~/tensorleap/data."""
    if environ.get("IS_CLOUD"):
        mounted = [volume for volume in CLOUD_VOLUMES if volume.is_dir()]
        if mounted:
            return mounted
    hosts = [Path(entry) for entry in environ.get("GENERIC_HOST_PATH", "").split(":") if entry]
    return hosts + [Path.home() / "tensorleap" / "data"]


def data_dir_candidates(root: str, environ: Mapping[str, str] = os.environ) -> list[Path]:
    """Where a data folder is looked for, in order: an absolute `root` (the config's setting) as it is, overriding
    every volume; else `<volume>/<root>` for every volume of `volume_roots`."""
    if Path(root).is_absolute():
        return [Path(root)]
    return [volume / root for volume in volume_roots(environ)]


def find_folder(root: str, what: str, setting: str, environ: Mapping[str, str] = os.environ) -> Path:
    """The first existing candidate of `data_dir_candidates`; else one error that lists every path tried
    (`setting`: where `root` comes from, e.g. 'data_root in project_config.yaml')."""
    candidates = data_dir_candidates(root, environ)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    note = ""
    if environ.get("IS_CLOUD") and not Path(root).is_absolute() and not any(v.is_dir() for v in CLOUD_VOLUMES):
        note = f" (IS_CLOUD is set but none of {', '.join(map(str, CLOUD_VOLUMES))} exists)"
    raise data.CelebADataError(
        f"{what} {root!r} ({setting}) not found; tried "
        f"{', '.join(str(c) for c in candidates)}{note}. Put it on the data volume under that name"
    )


def data_dir(config: "ProjectConfig | None" = None, environ: Mapping[str, str] = os.environ) -> Path:
    """The CelebA folder: CELEBA_DATA_DIR (local override), else `data_root` found on the data volume."""
    if environ.get(DATA_DIR_ENV):
        return Path(environ[DATA_DIR_ENV])
    config = config or CONFIG
    try:
        return find_folder(config.data_root, "CelebA folder", f"data_root in {config.path.name}", environ)
    except data.CelebADataError as exc:
        raise data.CelebADataError(f"{exc} (CelebA, official layout), or for a local run set {DATA_DIR_ENV}") from None


def photos_dir(config: "ProjectConfig | None" = None, environ: Mapping[str, str] = os.environ) -> tuple[Path, bool]:
    """(the photo folder's root, whether it is a local override): CELEBA_PHOTOS_DIR, else `photos.root` on the
    data volume."""
    if environ.get(PHOTOS_DIR_ENV):
        return Path(environ[PHOTOS_DIR_ENV]), True
    config = config or CONFIG
    assert config.photos is not None
    try:
        return find_folder(config.photos.root, "Photo folder", f"photos.root in {config.path.name}", environ), False
    except data.CelebADataError as exc:
        raise data.CelebADataError(f"{exc}, or set photos: null, or for a local run set {PHOTOS_DIR_ENV}") from None


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


@lru_cache(maxsize=4)
def photo_subset(root: Path, local: bool, limit: int | None) -> pd.DataFrame:
    """The photo subset: every photo with a face and every label known (its first `limit`), faces found and
    aligned like `celeba predict` once (the crops are cached), screened. `local`: crops under ~/.cache."""
    photos = CONFIG.photos
    assert photos is not None
    folder, labels_csv = root / photos.images, root / photos.labels_csv
    crops = sources.default_crops_dir(folder) if local else root / photos.crops
    split_file = None if photos.split_file is None else root / photos.split_file
    source = sources.PhotoSource(folder, labels_csv, None, photos.derive, split_file, crops)
    try:
        rows = sources.photo_rows(source, LABELS, None if photos.splits is None else list(photos.splits))
    except OSError as exc:  # a read-only volume without the cache
        raise _error(
            crops,
            f"cannot write the face-crop cache ({exc.strerror or exc}); make it with a local run on a writable "
            "copy of the folder and upload it with the folder (docs/tensorleap.md)",
        ) from None
    known = rows[list(LABELS)].notna().all(axis=1)
    if not known.any():
        raise _error(labels_csv, f"no photo has every label of {list(LABELS)} known (a column, or photos.derive)")
    if not known.all():
        log.warning("%d photos of %s have an unknown label and are not used", int((~known).sum()), labels_csv)
    rows = rows[known].reset_index(drop=True).iloc[:limit]
    rows = population_columns(rows, labels_csv, photos.columns, CONFIG.path.name).assign(dataset=root.name)
    return screen(rows, f"photos {root.name}")


@dataclass(frozen=True)
class Samples:
    """One subset's rows and an id -> row map: every encoder finds its sample in O(1)."""

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


def _value(row: pd.DataFrame, column: str) -> Any:
    """The sample's value of a column; None where the subset has no such column or the value is missing."""
    if column not in row.columns:
        return None
    value = row[column].iat[0]
    return None if pd.isna(value) else value


# --------------------------------------------------------------------------- dataset


@tensorleap_preprocess()
def preprocess() -> list[PreprocessResponse]:
    """CelebA's partitions as training, validation and test; the photo folder (`photos`) as `additional`."""
    folder, limit = data_dir(), CONFIG.sample_limit_per_split
    responses = [response(celeba_rows(folder, partition, limit), state) for partition, state in STATES.items()]
    if CONFIG.photos is not None:
        responses.append(response(photo_subset(*photos_dir(), limit), DataStateType.additional))
    return responses


@tensorleap_input_encoder("image", channel_dim=-1)
def input_image(sample_id: str, preprocess: PreprocessResponse) -> np.ndarray:
    """float32 HxWx3 in [0, 255]: `celeba.data.load_image`, the preprocessing training uses. A file that does not
    decode is an error that names it (TensorFlow's own names only its graph node)."""
    import tensorflow as tf

    path = _row(sample_id, preprocess)["path"].iat[0]
    try:
        return data.load_image(path, CONFIG.image_size).numpy()
    except tf.errors.OpError as exc:
        raise data.CelebADataError(f"{path}: cannot decode the image ({exc.message.splitlines()[0]})") from None


@tensorleap_gt_encoder("labels")
def gt_labels(sample_id: str, preprocess: PreprocessResponse) -> np.ndarray:
    return data.labels_array(_row(sample_id, preprocess), LABELS)[0]


ATTRIBUTE_TYPES = {name: DatasetMetadataType.boolean for name in data.ATTRIBUTES}


@tensorleap_metadata("attribute", ATTRIBUTE_TYPES)
def metadata_attributes(sample_id: str, preprocess: PreprocessResponse) -> dict[str, bool | None]:
    """All 40 CelebA attributes as booleans, to slice results by any of them; None where a subset does not know
    one (a photo folder knows its labels only)."""
    row = _row(sample_id, preprocess)
    return {name: None if (value := _value(row, name)) is None else bool(value) for name in data.ATTRIBUTES}


_POSE = ("pose_yaw", "pose_pitch", "pose_roll", "eye_distance")
SAMPLE_TYPES = {
    "cohort": DatasetMetadataType.string,
    "dataset": DatasetMetadataType.string,
    "identity": DatasetMetadataType.int,
    **{name: DatasetMetadataType.float for name in _POSE + data.LANDMARKS},
}


@tensorleap_metadata("sample", SAMPLE_TYPES)
def metadata_sample(sample_id: str, preprocess: PreprocessResponse) -> dict[str, str | int | float | None]:
    """Male x Young cohort, the dataset (celeba or the photo folder's name); where the CelebA files exist, the
    identity (int), pose proxies and the raw landmark pixel coordinates. Unknown values are None."""
    row = _row(sample_id, preprocess)
    cohort = None
    if (
        set(metrics.COHORT_ATTRIBUTES) <= set(row.columns)
        and row[list(metrics.COHORT_ATTRIBUTES)].notna().to_numpy().all()
    ):
        cohort = str(metrics.cohort_names(row).iat[0])
    identity = _value(row, "identity")
    values: dict[str, str | int | float | None] = {
        "cohort": cohort,
        "dataset": str(_value(row, "dataset") or "celeba"),
        "identity": None if identity is None else int(identity),
    }
    for name in _POSE + data.LANDMARKS:
        value = _value(row, name)
        values[name] = None if value is None else float(value)
    return values


POPULATION_TYPES = {
    "race": DatasetMetadataType.string,
    "age": DatasetMetadataType.int,
    "age_band": DatasetMetadataType.string,
    "gender": DatasetMetadataType.string,
}


@tensorleap_metadata("population", POPULATION_TYPES)
def metadata_population(sample_id: str, preprocess: PreprocessResponse) -> dict[str, str | int | None]:
    """Race, age (whole years), age band ('0-4' ... '60+', the project's bands) and gender from the photo folder's
    CSV; None on CelebA, which records none of them."""
    row = _row(sample_id, preprocess)
    age = _value(row, "age")
    return {
        "race": None if (race := _value(row, "race")) is None else str(race),
        "age": None if age is None else int(age),
        "age_band": None if (band := _value(row, "age_band")) is None else str(band),
        "gender": None if (gender := _value(row, "gender")) is None else str(gender),
    }


IMAGE_TYPES = {name: DatasetMetadataType.float for name in ("mean_luminance", "contrast", "sharpness", "file_kb")}


@tensorleap_metadata("image", IMAGE_TYPES)
def metadata_image(sample_id: str, preprocess: PreprocessResponse) -> dict[str, float]:
    """Of the file the model reads (a photo's aligned crop): mean luminance (lighting / skin-tone proxy),
    contrast, sharpness (Laplacian variance), file_kb."""
    stats = image_stats.file_statistics(_row(sample_id, preprocess)["path"].iat[0])
    return {name: float(stats[name]) for name in IMAGE_TYPES}


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
            f"models/<model>.keras --format onnx --out {path}`)"
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check_model(session, CONFIG, path)
    return session


# --------------------------------------------------------------------------- losses and metrics


@tensorleap_custom_loss("bce")
def bce_loss(gt: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    from celeba import losses  # Keras: imported where a loss runs, not by every worker

    return per_sample(losses.make_loss("bce"), gt, prediction)


if CONFIG.class_weights is not None:

    @tensorleap_custom_loss("weighted_bce")
    def weighted_bce_loss(gt: np.ndarray, prediction: np.ndarray) -> np.ndarray:
        """Training's weighted BCE with the class weights of project_config.yaml (the model's training set)."""
        from celeba import losses

        return per_sample(losses.WeightedBinaryCrossentropy(*CONFIG.pos_neg_weights()), gt, prediction)


@tensorleap_custom_metric(
    "label",
    direction={f"{label}_{kind}": direction for label in LABELS for kind, direction in METRIC_DIRECTIONS.items()},
    compute_insights={f"{label}_{kind}": kind in METRIC_INSIGHTS for label in LABELS for kind in METRIC_DIRECTIONS},
)
def label_metric(gt: np.ndarray, prediction: np.ndarray) -> dict[str, np.ndarray]:
    """Per sample and label: `<label>_<kind>` for every kind of METRIC_DIRECTIONS."""
    values = label_metrics(gt, prediction)
    return {f"{label}_{kind}": values[kind][:, j] for j, label in enumerate(LABELS) for kind in METRIC_DIRECTIONS}


# --------------------------------------------------------------------------- visualizers


@tensorleap_custom_visualizer("image", LeapDataType.Image)
def image_visualizer(image: np.ndarray) -> LeapImage:
    return LeapImage(np.clip(single(image), 0, 255).astype(np.uint8))


@tensorleap_custom_visualizer("labels_bar", LeapDataType.HorizontalBar)
def labels_visualizer(prediction: np.ndarray, gt: np.ndarray) -> LeapHorizontalBar:
    return LeapHorizontalBar(
        body=single(prediction).astype(np.float32), labels=list(LABELS), gt=single(gt).astype(np.float32)
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
    metadata_population(sample_id, preprocess)
    metadata_image(sample_id, preprocess)


if __name__ == "__main__":
    from leap_test import main

    raise SystemExit(main())
