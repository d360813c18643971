"""Training sources beyond CelebA: a labelled photo folder, split once, its faces cropped once like `predict` does.

A labelled folder (UTKFace, a user's own photos) is read by the same reader as `analyze --images`
(`folder_population`: a CSV or a file-name pattern, `--derive` rules). Its photos are not CelebA-aligned, so every
photo goes once through the project's face detection and alignment (`predict.face_crops`); the 178x218 crops are
cached as JPEG files, and from then on train, evaluate and predict see the same pixels through the one tf.data
pipeline. A fixed split file (`file,split`, made once by `split_folder`) says which photos train, which tune and
which are only ever evaluated.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from celeba.analysis.population import folder_population
from celeba.data import CelebADataError
from celeba.files import atomic_path
from celeba.population import AGE_BANDS, age_band

__all__ = ["AGE_BANDS", "CROPS_FILE", "PhotoSource", "age_band", "photo_rows", "read_split", "split_folder"]

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "evaluation")
CROPS_FILE = "crops.csv"


def split_folder(
    table: pd.DataFrame, strata: Sequence[str], seed: int = 0, fractions: Sequence[float] = (0.6, 0.2, 0.2)
) -> pd.DataFrame:
    """`file,split`: every stratum (e.g. race x gender x age band) cut by `fractions` into train/validation/evaluation.

    Deterministic for a seed and a table, whatever its row order; a stratum too small to cut goes to train first.
    """
    if len(fractions) != len(SPLITS) or not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"fractions must be {len(SPLITS)} non-negative numbers summing to 1, got {list(fractions)}")
    missing = [c for c in strata if c not in table.columns]
    if missing:
        raise CelebADataError(f"split: no column {missing} (columns: {', '.join(table.columns)})")
    rows = table.sort_values("file").reset_index(drop=True)
    key = rows[list(strata)].astype(str).agg("|".join, axis=1) if strata else pd.Series("", index=rows.index)
    rng = np.random.default_rng(seed)
    split = np.empty(len(rows), dtype=object)
    for _, index in sorted(rows.groupby(key).groups.items()):
        order = rng.permutation(np.asarray(index))
        cuts = np.floor(np.cumsum(fractions)[:-1] * len(order) + 0.5).astype(int)
        for name, part in zip(SPLITS, np.split(order, cuts)):
            split[part] = name
    return pd.DataFrame({"file": rows["file"], "split": split})


def read_split(path: Path) -> pd.Series:
    """file -> split, from a committed split file; a malformed one is a clear error naming it."""
    try:
        frame = pd.read_csv(path, dtype=str)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CelebADataError(f"{path}: unreadable split file ({exc})") from None
    if list(frame.columns[:2]) != ["file", "split"]:
        raise CelebADataError(f"{path}: a split file has the columns file,split (found {', '.join(frame.columns)})")
    unknown = sorted(set(frame["split"]) - set(SPLITS))
    if unknown:
        raise CelebADataError(f"{path}: unknown split value(s) {unknown}; use {', '.join(SPLITS)}")
    return frame.set_index("file")["split"]


# --------------------------------------------------------------------------- face crops, once


def default_crops_dir(folder: Path) -> Path:
    """A per-folder cache under the user's cache directory (the data folder may be read-only)."""
    resolved = Path(folder).resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    return Path.home() / ".cache" / "celeba-attributes" / "crops" / f"{resolved.name}-{digest}"


def crop_name(file: str) -> str:
    """The cache file of one photo: its name made flat and unique (folders become '__')."""
    return file.replace("/", "__") + ".crop.jpg"


def cache_crops(paths: Sequence[str], files: Sequence[str], crops_dir: Path) -> pd.DataFrame:
    """`file, crop, face`: the largest face of each photo, aligned like CelebA, written once as a JPEG.

    `face` is 'one', 'several' (the largest is kept), 'none' or 'unreadable'; photos without a usable face get
    no crop. The table is kept in `crops.csv`; photos already in it are not detected again, so an interrupted
    caching resumes, and every crop file is written to a temporary name and renamed.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    from celeba.predict import ImageError, face_crops, read_photo

    crops_dir.mkdir(parents=True, exist_ok=True)
    table_path = crops_dir / CROPS_FILE
    done = pd.read_csv(table_path, dtype=str, keep_default_na=False) if table_path.is_file() else None
    known = {} if done is None else dict(zip(done["file"], done["face"]))
    rows = []
    todo = [(p, f) for p, f in zip(paths, files) if f not in known or not _crop_ok(crops_dir, f, known[f])]
    for i, (path, file) in enumerate(tqdm(todo, desc="faces", unit="img", disable=len(todo) < 50)):
        try:
            found = face_crops(read_photo(Path(path)), True, 2, name=str(path))
        except ImageError as exc:
            log.warning("%s", exc)
            known[file] = "unreadable"
            continue
        known[file] = "none" if not found else "one" if len(found) == 1 else "several"
        if found:
            with atomic_path(crops_dir / crop_name(file)) as tmp:
                Image.fromarray(found[0].crop).save(tmp, format="JPEG", quality=95)
        if (i + 1) % 500 == 0:  # progress survives an interruption
            _write_table(known, table_path)
    if todo:
        _write_table(known, table_path)
    for file in files:
        face = known[file]
        rows.append({"file": file, "face": face, "crop": str(crops_dir / crop_name(file)) if _has_face(face) else ""})
    return pd.DataFrame(rows, columns=["file", "face", "crop"])


def _has_face(face: str) -> bool:
    return face in ("one", "several")


def _crop_ok(crops_dir: Path, file: str, face: str) -> bool:
    return not _has_face(face) or (crops_dir / crop_name(file)).is_file()


def _write_table(known: dict[str, str], path: Path) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame({"file": list(known), "face": list(known.values())}).to_csv(tmp, index=False)


# --------------------------------------------------------------------------- a photo folder as training rows


@dataclass(frozen=True)
class PhotoSource:
    """A labelled photo folder to train on beside CelebA (train's `--photos*` flags)."""

    folder: Path
    labels_csv: Path | None
    filename_pattern: str | None
    derive: tuple[str, ...]
    split_file: Path | None
    crops_dir: Path | None = None


def photo_rows(
    source: PhotoSource, labels: Sequence[str], splits: Sequence[str] | None, keep_groups: bool = False
) -> pd.DataFrame:
    """Rows of the given splits (None: every photo, no split file needed), in the training pipeline's shape:
    `image_id, path` (the cached crop), one float column per label (NaN where the folder does not know it: the
    loss masks it), `source`, `split` and, with `keep_groups`, the folder's group columns (`group:race`, ...).

    Photos without a face are left out with a logged count; a folder with no usable photo is an error.
    """
    population = folder_population(
        source.folder, source.labels_csv, source.filename_pattern, source.derive, bins=len(AGE_BANDS)
    )
    table = population.rows
    if splits is None:
        table = table.assign(split="")
    else:
        if source.split_file is None:
            raise CelebADataError(f"{source.folder}: a split file is needed to take the parts {', '.join(splits)}")
        split = read_split(source.split_file)
        table = table.assign(split=table["image_id"].map(split))
        unsplit = int(table["split"].isna().sum())
        if unsplit:
            log.warning("%d photos of %s are not in %s and are not used", unsplit, source.folder, source.split_file)
        table = table[table["split"].isin(splits)].reset_index(drop=True)
        if table.empty:
            raise CelebADataError(
                f"{source.folder}: no photo of the split(s) {', '.join(splits)} in {source.split_file}"
            )
    known = [label for label in labels if label in table.columns]
    if not known:
        raise CelebADataError(
            f"{source.folder}: none of the labels {', '.join(labels)} is known for these photos "
            "(a column of the CSV, or --photos-derive 'Young=age<30')"
        )
    crops_dir = source.crops_dir or default_crops_dir(source.folder)
    crops = cache_crops(list(table["path"]), list(table["image_id"]), crops_dir)
    faceless = crops["crop"] == ""
    if faceless.any():
        log.info("%s: %d of %d photos have no face found and are not used", source.folder, faceless.sum(), len(crops))
    table = table.assign(path=crops["crop"].to_numpy())[~faceless.to_numpy()].reset_index(drop=True)
    if table.empty:
        raise CelebADataError(f"{source.folder}: no usable photo (no face found in any of {len(crops)})")
    out = pd.DataFrame({"image_id": table["image_id"], "path": table["path"]})
    for label in labels:
        out[label] = table[label].astype(float) if label in table.columns else np.nan
    out["source"] = str(source.folder)
    out["split"] = table["split"].to_numpy()
    if keep_groups:
        groups = [c for c in table.columns if c.startswith("group:")]
        out = pd.concat([out, table[groups].reset_index(drop=True)], axis=1)
    return out
