"""The Tensorleap integration's rows: CelebA partitions and photo-folder columns, every image file screened once.

Pure pandas over `celeba.data` (TensorFlow is imported by the first index read, not by importing this module);
leap_binder.py turns these rows into code-loader's subsets and encoders.
"""

import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from celeba import data, sources
from leap_settings import PHOTO_COLUMNS, _error

log = logging.getLogger("leap_binder")  # one logger for the whole integration


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


def population_columns(
    rows: pd.DataFrame, labels_csv: Path, columns: Mapping[str, str | None], config_name: str = "project_config.yaml"
) -> pd.DataFrame:
    """The rows with race, age (whole years), age_band and gender from the folder's CSV, read by the reader of
    `analyze --images`; a configured column the CSV lacks is an error naming the CSV."""
    from celeba.analysis.population import read_labels_csv

    table = read_labels_csv(labels_csv).set_index("file")
    missing = {name: column for name, column in columns.items() if column and column not in table.columns}
    if missing:
        raise _error(
            labels_csv,
            f"no column {missing} (photos.columns in {config_name}); its columns: {', '.join(table.columns)}",
        )
    text = {name: _csv_text(table, columns.get(name), rows["image_id"]) for name in PHOTO_COLUMNS}
    age = np.floor(pd.to_numeric(pd.Series(text["age"], dtype=object), errors="coerce"))
    return rows.assign(
        race=text["race"],
        gender=text["gender"],
        age=age.to_numpy(),
        age_band=sources.age_band(age).astype(object).to_numpy(),
    )
