"""CelebA's annotation files, the file systems they are read from, and the label arrays.

The lowest module of `celeba.data`: names, readers and the error every reader raises.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


PARTITIONS = {0: "train", 1: "validation", 2: "test"}
ATTRIBUTES = tuple(
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young".split()
)
IMAGE_DIR = "img_align_celeba"
ATTR_FILES = ("list_attr_celeba.txt", "list_attr_celeba.csv")
PARTITION_FILES = ("list_eval_partition.txt", "list_eval_partition.csv")
IDENTITY_FILE = "identity_CelebA.txt"
#: The embedded sample: real CelebA images in the official layout, shipped with the repo.
SAMPLE_DIR = Path(__file__).resolve().parents[2] / "data" / "celeba-sample"


class CelebADataError(ValueError):
    """Bad or missing CelebA input; the message names the file and the problem."""


def _error(path: Path | str, problem: str) -> CelebADataError:
    return CelebADataError(f"{path}: {problem}")


# --------------------------------------------------------------------------- file systems


def fs_path(path: Path | str) -> str:
    """A local path or a URL (gs://, s3://, ram://) as tf.io.gfile takes it.

    pathlib turns `gs://bucket/x` into `gs:/bucket/x`; the scheme's double slash is put back.
    """
    return re.sub(r"^([A-Za-z][\w+.-]+):/(?!/)", r"\1://", os.fspath(path))


def is_url(path: Path | str) -> bool:
    return "://" in fs_path(path)


def join(base: Path | str, *names: str) -> str:
    """`base/names...`: pathlib's join for local paths (same text as before), '/' for URLs."""
    base = fs_path(base)
    return "/".join([base.rstrip("/"), *names]) if is_url(base) else str(Path(base, *names))


def _as_path(path: str) -> Path | str:
    """Local paths stay `Path`s for callers that glob them; URLs stay strings."""
    return path if is_url(path) else Path(path)


def is_file(path: Path | str) -> bool:
    import tensorflow as tf

    return tf.io.gfile.exists(fs_path(path)) and not tf.io.gfile.isdir(fs_path(path))


def is_dir(path: Path | str) -> bool:
    import tensorflow as tf

    return tf.io.gfile.isdir(fs_path(path))


def read_text(path: Path | str) -> str:
    """A whole text file, from any file system TensorFlow knows (annotation files are a few MB)."""
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(fs_path(path), "rb") as f:
            return f.read().decode("utf-8")
    except tf.errors.PermissionDeniedError:
        raise _error(path, "cannot read it (permission denied)") from None


# --------------------------------------------------------------------------- annotation files


def read_attributes(path: Path | str) -> pd.DataFrame:
    """Read `list_attr_celeba.txt` (official) or `.csv` (Kaggle): image id -> 40 columns of 0/1."""
    path = fs_path(path)
    if not is_file(path):
        raise _error(path, "attribute file not found")
    try:
        text = read_text(path)
        if path.endswith(".csv"):
            frame = pd.read_csv(io.StringIO(text), index_col=0, dtype={0: str})
        else:
            first_lines = text.split("\n", 2)
            declared = first_lines[0].strip()
            header = first_lines[1].split() if len(first_lines) > 1 else []
            if not declared.isdigit():
                raise _error(path, f"first line must be the row count, got {declared[:40]!r}")
            missing = [a for a in ATTRIBUTES if a not in header]
            if missing:  # pandas would shift the columns and fail with a TypeError
                raise _error(
                    path, f"line 2: header lacks attribute(s) {missing[:5]}{'...' if len(missing) > 5 else ''}"
                )
            # Header has 40 names and rows 41 fields, so pandas makes the file name the index.
            frame = pd.read_csv(io.StringIO(text), sep=r"\s+", skiprows=1, header=0)
            if len(frame) != int(declared):
                raise _error(path, f"declares {declared} rows but has {len(frame)} (truncated file?)")
    except CelebADataError:
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise _error(path, f"malformed attribute file ({exc})") from None
    if isinstance(frame.index, pd.MultiIndex):  # rows with more fields than the header names
        raise _error(path, "rows have more fields than the header has names (a broken header or rows?)")
    frame.index = frame.index.astype(str)
    frame.index.name = "image_id"
    frame = _drop_duplicate_rows(frame, path, "attribute rows")
    missing = [a for a in ATTRIBUTES if a not in frame.columns]
    if missing:
        raise _error(path, f"missing attribute columns {missing[:5]}{'...' if len(missing) > 5 else ''}")
    frame = frame[list(ATTRIBUTES)]
    bad = frame.isna().any(axis=1) | ~frame.isin([-1, 1, 0]).all(axis=1)
    if bad.any():
        raise _error(
            path,
            f"row for {bad.idxmax()!r} is incomplete or has values other than -1/1 "
            f"({int(bad.sum())} bad rows; truncated file?)",
        )
    return (frame.astype(np.int8) == 1).astype(np.int8)


def read_partitions(path: Path | str) -> pd.Series:
    """Read `list_eval_partition.txt`/`.csv`: image id -> 'train' | 'validation' | 'test'."""
    path = fs_path(path)
    if not is_file(path):
        raise _error(path, "partition file not found")
    try:
        text = io.StringIO(read_text(path))
        if path.endswith(".csv"):
            frame = pd.read_csv(text, dtype={"image_id": str})
            frame.columns = ["image_id", "partition"]
        else:
            frame = pd.read_csv(text, sep=r"\s+", header=None, names=["image_id", "partition"], dtype={"image_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise _error(path, f"malformed partition file ({exc})") from None
    codes = pd.to_numeric(frame["partition"], errors="coerce")
    if codes.isna().any() or not codes.isin(PARTITIONS).all():
        row = int((codes.isna() | ~codes.isin(PARTITIONS)).idxmax())
        raise _error(path, f"line {row + 1}: partition must be 0, 1 or 2, got {frame['partition'][row]!r}")
    parts = pd.DataFrame(
        {"partition": codes.astype(int).map(PARTITIONS).values},
        index=pd.Index(frame["image_id"].values, name="image_id"),
    )
    return _drop_duplicate_rows(parts, path, "partition rows")["partition"]


def _drop_duplicate_rows(frame: pd.DataFrame, path: Path | str, what: str) -> pd.DataFrame:
    """Exact repeats of an image's row are dropped with a warning; different rows for one image are an error
    (an image in both train and test would leak the test set into training)."""
    repeated = frame.index.duplicated(keep=False)
    if not repeated.any():
        return frame
    rows = frame[repeated]
    distinct = rows.reset_index().drop_duplicates().set_index(frame.index.name or "index")
    conflicting = distinct.index[distinct.index.duplicated()].unique()
    if len(conflicting):
        first = conflicting[0]
        values = rows.loc[first, "partition"].tolist() if "partition" in rows.columns else "different values"
        raise _error(
            path,
            f"{len(conflicting)} image(s) have conflicting {what}, e.g. {first!r}: {values}; "
            f"fix the file (an image in two partitions leaks test data into training)",
        )
    dropped = int(frame.index.duplicated().sum())
    log.warning(
        "%s: %d duplicate %s dropped (e.g. %s)",
        path,
        dropped,
        what,
        ", ".join(frame.index[frame.index.duplicated()].unique()[:3]),
    )
    return frame[~frame.index.duplicated()]


def read_identities(path: Path | str) -> pd.Series:
    """Read `identity_CelebA.txt`: image id -> celebrity id (for identity-aware analysis)."""
    try:
        frame = pd.read_csv(
            io.StringIO(read_text(path)),
            sep=r"\s+",
            header=None,
            names=["image_id", "identity"],
            dtype={"image_id": str, "identity": "Int64"},
        )
    except (pd.errors.ParserError, ValueError) as exc:
        raise _error(path, f"malformed identity file ({exc})") from None
    return frame.set_index("image_id")["identity"]


LANDMARKS_FILE = "list_landmarks_align_celeba.txt"
LANDMARKS = tuple(
    "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y".split()
)


def read_landmarks(path: Path | str) -> pd.DataFrame:
    """Read `list_landmarks_align_celeba.txt`: image id -> 10 pixel coordinates (eyes, nose, mouth corners)."""
    path = fs_path(path)
    if not is_file(path):
        raise _error(path, "landmarks file not found")
    text = read_text(path)
    declared = text.split("\n", 1)[0].strip()
    if not declared.isdigit():
        raise _error(path, f"first line must be the row count, got {declared[:40]!r}")
    try:  # like the attribute file: a header of 10 names over rows of 11 fields
        frame = pd.read_csv(io.StringIO(text), sep=r"\s+", skiprows=1, header=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise _error(path, f"malformed landmarks file ({exc})") from None
    missing = [name for name in LANDMARKS if name not in frame.columns]
    if missing:
        raise _error(path, f"missing landmark columns {missing}")
    if len(frame) != int(declared):
        raise _error(path, f"declares {declared} rows but has {len(frame)} (truncated file?)")
    frame = frame[list(LANDMARKS)].apply(pd.to_numeric, errors="coerce")
    bad = frame.isna().any(axis=1)
    if bad.any():
        raise _error(path, f"row for {bad.idxmax()!r} is incomplete or not numeric ({int(bad.sum())} bad rows)")
    frame.index = frame.index.astype(str)
    frame.index.name = "image_id"
    return frame.astype(np.float32)


def pose_proxies(landmarks: pd.DataFrame) -> pd.DataFrame:
    """Head-pose proxies from the 5 aligned landmarks, scale-free (divided by the eye distance).

    yaw: nose offset from the eyes' midpoint (0 = frontal, sign = turn direction); pitch: where the nose
    sits between the eye line (0) and the mouth line (1); roll: eye-line angle in degrees.
    """
    lm = landmarks.astype(np.float64)
    eye_dx, eye_dy = lm["righteye_x"] - lm["lefteye_x"], lm["righteye_y"] - lm["lefteye_y"]
    eye_distance = np.hypot(eye_dx, eye_dy)
    eye_x, eye_y = (lm["lefteye_x"] + lm["righteye_x"]) / 2, (lm["lefteye_y"] + lm["righteye_y"]) / 2
    mouth_y = (lm["leftmouth_y"] + lm["rightmouth_y"]) / 2
    return pd.DataFrame(
        {
            "pose_yaw": (lm["nose_x"] - eye_x) / eye_distance.replace(0, np.nan),
            "pose_pitch": (lm["nose_y"] - eye_y) / (mouth_y - eye_y).replace(0, np.nan),
            "pose_roll": np.degrees(np.arctan2(eye_dy, eye_dx)),
            "eye_distance": eye_distance,
        },
        index=landmarks.index,
    ).astype(np.float32)


def _find(data_dir: Path | str, names: Sequence[str]) -> str:
    for name in names:
        for candidate in (join(data_dir, name), join(data_dir, "Anno", name), join(data_dir, "Eval", name)):
            if is_file(candidate):
                return candidate
    raise _error(data_dir, f"none of {', '.join(names)} found (is this a CelebA folder?)")


def _find_optional(data_dir: Path | str, name: str) -> str | None:
    try:
        return _find(data_dir, (name,))
    except CelebADataError:
        return None


def image_dir(data_dir: Path | str) -> Path | str:
    """The image folder, also in the Kaggle layout (`img_align_celeba/img_align_celeba/`); a URL stays a string."""
    folder = join(data_dir, IMAGE_DIR)
    if is_dir(join(folder, IMAGE_DIR)):
        folder = join(folder, IMAGE_DIR)
    if not is_dir(folder):
        raise _error(folder, "image folder not found")
    return _as_path(folder)


# --------------------------------------------------------------------------- the index


def check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    unknown = [name for name in labels if name not in ATTRIBUTES]
    if unknown or not labels:
        raise CelebADataError(
            f"--labels: unknown attribute(s) {unknown or '(none given)'}; choose from: {', '.join(ATTRIBUTES)}"
        )
    repeated = sorted({name for name in labels if list(labels).count(name) > 1})
    if repeated:
        raise CelebADataError(f"--labels: {', '.join(repeated)} given more than once")
    return tuple(labels)


def labels_array(rows: pd.DataFrame, labels: Sequence[str]) -> np.ndarray:
    return rows[list(labels)].to_numpy(dtype=np.float32)


def cohort_keys(y: np.ndarray) -> np.ndarray:
    """One integer per row for its combination of label values (Male x Young -> 0..3)."""
    y = np.asarray(y, dtype=np.int64)
    return (y * (1 << np.arange(y.shape[1]))).sum(axis=1) if y.size else np.zeros(len(y), np.int64)
