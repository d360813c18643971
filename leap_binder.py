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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

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

from celeba import data, image_stats, metrics, sources

log = logging.getLogger("leap_binder")

ROOT = Path(__file__).resolve().parent
CONFIG_FILE = ROOT / "project_config.yaml"
DATA_DIR_ENV = "CELEBA_DATA_DIR"
PHOTOS_DIR_ENV = "CELEBA_PHOTOS_DIR"
MODEL_ENV = "CELEBA_LEAP_MODEL"
STATES = {"train": DataStateType.training, "validation": DataStateType.validation, "test": DataStateType.test}
#: The cloud platform's data mounts, tried in this order where they exist (IS_CLOUD set).
CLOUD_VOLUMES = (Path("/fsx"), Path("/nfs"))
PHOTO_COLUMNS = ("race", "age", "gender")  # population metadata read from the photo folder's CSV


# --------------------------------------------------------------------------- settings


def _error(path: Path, problem: str) -> data.CelebADataError:
    return data.CelebADataError(f"{path}: {problem}")


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


@dataclass(frozen=True)
class PhotoConfig:
    """`photos` in `project_config.yaml`: a labelled photo folder, the binder's `additional` subset."""

    root: str = "utkface"  # the folder on the data volume (looked up like data_root); absolute: as it is
    images: str = "images"  # relative to root
    labels_csv: str = "labels.csv"  # relative to root: `file` plus label and group columns
    derive: tuple[str, ...] = ()  # labels from other columns, e.g. 'Young=age<30'
    split_file: str | None = None  # relative to root: file,split (train/validation/evaluation)
    splits: tuple[str, ...] | None = None  # which parts of the split file; None: every photo
    crops: str = "crops"  # relative to root: the face-crop cache (made once; upload it with the folder)
    columns: dict[str, str | None] = field(default_factory=lambda: {name: name for name in PHOTO_COLUMNS})

    @classmethod
    def parse(cls, raw: Any, path: Path) -> "PhotoConfig | None":
        """The `photos` section (None: no photo subset); a problem is an error naming the file and the setting."""
        if raw is None:
            return None
        problem = cls.problem(raw)
        if problem:
            raise _error(path, f"photos: {problem}")
        columns = raw.get("columns", cls().columns)
        return cls(
            **{
                **raw,
                "derive": tuple(raw.get("derive", ())),
                "splits": None if raw.get("splits") is None else tuple(raw["splits"]),
                "columns": {name: columns.get(name) for name in PHOTO_COLUMNS},
            }
        )

    @classmethod
    def problem(cls, raw: Any) -> str | None:
        """What is wrong with a raw `photos` section, if anything."""
        if not isinstance(raw, dict):
            return f"must be a mapping or null, got {raw!r}"
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        names = [k for k in ("root", "images", "labels_csv", "crops", "split_file") if k in raw]
        wrong = [k for k in names if not isinstance(raw[k], str) and not (k == "split_file" and raw[k] is None)]
        derive, splits, columns = raw.get("derive", []), raw.get("splits"), raw.get("columns", {})
        problems = [
            (unknown, f"unknown setting(s) {unknown}"),
            (wrong, f"{', '.join(wrong)} must be a file or folder name"),
            (
                not _strings(derive) or any("=" not in d for d in derive),
                f"derive must be a list like ['Young=age<30'], got {derive!r}",
            ),
            (
                splits is not None and (not _strings(splits) or not set(splits) <= set(sources.SPLITS)),
                f"splits must be null or a list of {list(sources.SPLITS)}, got {splits!r}",
            ),
            (splits is not None and raw.get("split_file") is None, "splits needs a split_file"),
            (
                not isinstance(columns, dict)
                or not set(columns) <= set(PHOTO_COLUMNS)
                or not all(isinstance(v, str | None) for v in columns.values()),
                f"columns maps {list(PHOTO_COLUMNS)} to CSV column names (or null), got {columns!r}",
            ),
        ]
        return next((message for failed, message in problems if failed), None)


@dataclass(frozen=True)
class ProjectConfig:
    """`project_config.yaml`: what the platform cannot learn from the uploaded model file alone."""

    data_root: str = "celeba"
    labels: tuple[str, ...] = ("Male", "Young")
    image_size: int = 128
    class_weights: dict[str, dict[str, float]] | None = None  # label -> {positive: w, negative: w}
    sample_limit_per_split: int | None = None
    model: str = "models/multisource16k-bce-128-dfr-utkface-float32.onnx"
    comparison_model: str | None = None  # a second ONNX model to compare (issue #24 item 5); unused so far
    photos: PhotoConfig | None = None
    path: Path = field(default=CONFIG_FILE, compare=False)

    @classmethod
    def read(cls, path: Path = CONFIG_FILE) -> "ProjectConfig":
        """Parse and check the file; every problem names the file and the setting."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise _error(path, f"cannot read the integration settings ({exc})") from None
        unknown = sorted(set(raw) - {f for f in cls.__dataclass_fields__ if f != "path"})
        if unknown:
            raise _error(path, f"unknown setting(s) {unknown}")
        try:
            labels = data.check_labels(tuple(raw.get("labels", cls.labels)))
        except data.CelebADataError as exc:
            raise _error(path, f"labels: {exc}") from None
        config = cls(**{**raw, "labels": labels, "photos": PhotoConfig.parse(raw.get("photos"), path), "path": path})
        config.check()
        return config

    def check(self) -> None:
        """The scalar settings' types and ranges."""
        if not isinstance(self.image_size, int) or self.image_size < 32:
            raise _error(self.path, f"image_size must be an integer >= 32, got {self.image_size!r}")
        limit = self.sample_limit_per_split
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise _error(self.path, f"sample_limit_per_split must be a positive integer or null, got {limit!r}")
        if self.comparison_model is not None and not isinstance(self.comparison_model, str):
            raise _error(
                self.path, f"comparison_model must be an .onnx file name or null, got {self.comparison_model!r}"
            )
        weights = self.class_weights
        if weights is not None and (
            set(weights) != set(self.labels) or any(set(w) != {"positive", "negative"} for w in weights.values())
        ):
            raise _error(
                self.path,
                f"class_weights needs {{positive: w, negative: w}} for exactly the labels {list(self.labels)}, "
                f"got {weights}",
            )

    def pos_neg_weights(self) -> tuple[list[float], list[float]]:
        """The weights in label order, as `celeba.losses.WeightedBinaryCrossentropy` takes them."""
        assert self.class_weights is not None
        return (
            [float(self.class_weights[label]["positive"]) for label in self.labels],
            [float(self.class_weights[label]["negative"]) for label in self.labels],
        )


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


# --------------------------------------------------------------------------- bad image files, screened once


def _decode_problem(path: str) -> str | None:
    """A full decode with PIL (it refuses truncated files): None where it succeeds."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except Exception as exc:  # PIL raises many types for bad files; every one means "do not use it"
        return f"not a decodable image ({type(exc).__name__}: {exc})"
    return None


def image_problem(path: str) -> str | None:
    """None for a complete image file, else why not. Cheap for the usual case: a JPEG that starts with SOI and ends
    with EOI, or a PNG that ends with IEND, is taken as complete; anything else is decoded in full."""
    if data.is_url(path):
        return None  # remote files: the input encoder's error names a bad one
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, os.fstat(f.fileno()).st_size - 12))
            tail = f.read()
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if not head:
        return "empty file"
    if (head.startswith(b"\xff\xd8") and tail.endswith(b"\xff\xd9")) or (
        head.startswith(b"\x89PNG") and b"IEND" in tail
    ):
        return None
    return _decode_problem(path)


def screen(rows: pd.DataFrame, what: str) -> pd.DataFrame:
    """The rows whose image file is complete; every excluded file is logged by name, with the reason."""
    paths = rows["path"].astype(str).tolist()
    with ThreadPoolExecutor(8) as pool:
        problems = {path: problem for path, problem in zip(paths, pool.map(image_problem, paths)) if problem}
    for path, problem in problems.items():
        log.warning("excluded from %s: %s: %s", what, path, problem)
        _EXCLUDED[path] = problem
    if problems:
        log.warning("%d unreadable image file(s) excluded from %s", len(problems), what)
    return rows[~rows["path"].astype(str).isin(problems)].reset_index(drop=True)


_EXCLUDED: dict[str, str] = {}


def excluded_images() -> dict[str, str]:
    """{path: problem} of every image file screening has excluded in this process."""
    return dict(_EXCLUDED)


# --------------------------------------------------------------------------- the subsets, once per process


@lru_cache(maxsize=4)
def load_index(folder: Path) -> pd.DataFrame:
    """`celeba.data.load_index` plus the raw landmark coordinates where the landmarks file exists."""
    index = data.load_index(folder)
    landmarks_file = data._find_optional(Path(folder), data.LANDMARKS_FILE)
    if landmarks_file is not None:
        index = index.join(data.read_landmarks(landmarks_file), on="image_id")
    return index


@lru_cache(maxsize=16)
def celeba_rows(folder: Path, partition: str, limit: int | None) -> pd.DataFrame:
    """One partition (its first `limit` rows), screened."""
    rows = data.split(load_index(folder), partition, limit)
    return screen(rows.assign(dataset="celeba"), f"CelebA {partition}")


def _csv_text(table: pd.DataFrame, column: str | None, ids: pd.Series) -> list[str | None]:
    """One CSV column for the given files, as text; empty or absent -> None."""
    if column is None:
        return [None] * len(ids)
    return [value or None for value in table[column].reindex(ids).fillna("")]


def population_columns(rows: pd.DataFrame, labels_csv: Path, columns: Mapping[str, str | None]) -> pd.DataFrame:
    """The rows with race, age (whole years), age_band and gender from the folder's CSV, read by the reader of
    `analyze --images`; a configured column the CSV lacks is an error naming the CSV."""
    from celeba.analysis.population import read_labels_csv

    table = read_labels_csv(labels_csv).set_index("file")
    missing = {name: column for name, column in columns.items() if column and column not in table.columns}
    if missing:
        raise _error(
            labels_csv,
            f"no column {missing} (photos.columns in {CONFIG.path.name}); its columns: {', '.join(table.columns)}",
        )
    text = {name: _csv_text(table, columns.get(name), rows["image_id"]) for name in PHOTO_COLUMNS}
    age = np.floor(pd.to_numeric(pd.Series(text["age"], dtype=object), errors="coerce"))
    return rows.assign(
        race=text["race"],
        gender=text["gender"],
        age=age.to_numpy(),
        age_band=sources.age_band(age).astype(object).to_numpy(),
    )


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
    rows = population_columns(rows, labels_csv, photos.columns).assign(dataset=root.name)
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


# Insights (the platform's search for clusters where a metric is bad) for the kinds that say something of their
# own; tp/tn/fp/fn, miss_rate and fall_out mirror accuracy, recall and specificity and would repeat their findings.
METRIC_INSIGHTS = {"accuracy", "recall", "specificity", "confidence", "margin"}


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
    metadata_population(sample_id, preprocess)
    metadata_image(sample_id, preprocess)


if __name__ == "__main__":
    from leap_test import main

    raise SystemExit(main())
