"""CelebA reading and the tf.data input pipeline.

Everything that turns files into model inputs lives here, so that training, evaluation,
prediction and the Tensorleap encoders see exactly the same pixels.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "data" / "celeba-sample"


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


def load_index(data_dir: Path | str, check_images: bool = False) -> pd.DataFrame:
    """One row per usable image: image_id, path, partition, the 40 attributes, identity and pose proxies (if known).

    Rows whose image is missing (a partial download, or the shared subset) are skipped with a
    warning and a count; so are unreadable images when `check_images` is set.
    """
    import tensorflow as tf

    data_dir = fs_path(data_dir)
    if not is_dir(data_dir):
        raise _error(data_dir, "data folder not found (download CelebA and pass --data-dir)")
    if is_prepared(data_dir):  # TFRecords written by `prepare`: already checked, cropped and resized
        return load_prepared_index(data_dir)
    attrs = read_attributes(_find(data_dir, ATTR_FILES))
    parts = read_partitions(_find(data_dir, PARTITION_FILES))
    frame = attrs.join(parts, how="inner")
    if len(frame) < len(attrs):
        log.warning("%d attribute rows have no partition and are skipped", len(attrs) - len(frame))
    if len(frame) < len(parts):
        lacking = parts.index.difference(attrs.index)
        log.warning(
            "%d partition rows have no attribute row and are skipped (e.g. %s)", len(lacking), ", ".join(lacking[:3])
        )
    if is_file(join(data_dir, IDENTITY_FILE)):
        frame = frame.join(read_identities(join(data_dir, IDENTITY_FILE)), how="left")
    landmarks = _find_optional(data_dir, LANDMARKS_FILE)
    if landmarks is not None:
        frame = frame.join(pose_proxies(read_landmarks(landmarks)), how="left")

    folder = image_dir(data_dir)
    present = set(tf.io.gfile.listdir(fs_path(folder)))
    has_image = frame.index.isin(present)
    if not has_image.all():
        missing = frame.index[~has_image]
        log.warning(
            "%d of %d annotated images are not in %s and are skipped (e.g. %s)",
            len(missing),
            len(frame),
            folder,
            ", ".join(missing[:3]),
        )
        frame = frame[has_image]
    if frame.empty:
        raise _error(folder, "no annotated image found in this folder")

    frame = frame.reset_index()
    frame.insert(1, "path", [join(folder, name) for name in frame["image_id"]])
    if check_images:
        problems = find_bad_images(frame["path"])
        if problems:
            for path, problem in problems.items():
                log.warning("skipping %s: %s", path, problem)
            log.warning("%d unreadable images skipped", len(problems))
            frame = frame[~frame["path"].isin(problems)].reset_index(drop=True)
    return frame


def split(index: pd.DataFrame, partition: str, limit: int | None = None) -> pd.DataFrame:
    """Rows of one official partition, optionally the first `limit` of them (deterministic)."""
    if partition not in PARTITIONS.values():
        raise CelebADataError(f"unknown partition {partition!r}; choose from {list(PARTITIONS.values())}")
    rows = index[index["partition"] == partition]
    if limit is not None:
        rows = rows.iloc[:limit]
    return rows.reset_index(drop=True)


def _image_problem(path: str) -> str | None:
    from PIL import Image

    try:
        if is_url(path):
            import tensorflow as tf

            with tf.io.gfile.GFile(path, "rb") as f, Image.open(io.BytesIO(f.read())) as image:
                image.load()
        else:
            with Image.open(path) as image:
                image.load()
    except Exception as exc:  # PIL raises many types for bad files; every one means "skip it"
        return f"unreadable image ({type(exc).__name__}: {exc})"
    return None


def find_bad_images(paths: Sequence[str], workers: int = 8) -> dict[str, str]:
    """Fully decode every image (in threads) and return {path: problem} for those that fail."""
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(workers) as pool:
        results = list(
            tqdm(
                pool.map(_image_problem, paths),
                total=len(paths),
                desc="checking images",
                unit="img",
                disable=len(paths) < 2000,
                leave=False,
            )
        )
    return {path: problem for path, problem in zip(paths, results) if problem}


# --------------------------------------------------------------------------- tf.data


def preprocess_image(image, image_size: int):
    """Centre-crop to a square (178x218 -> 178x178 for aligned CelebA) and resize; float32 in [0, 255].

    The one preprocessing step every consumer calls. Scaling to [-1, 1] happens inside the model.
    """
    import tensorflow as tf

    image = tf.convert_to_tensor(image)
    if image.shape.rank == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif image.shape[-1] == 4:
        image = image[..., :3]
    return resize_square(centre_square(image), image_size)


def centre_square(image):
    """The largest centred square of an HxWxC image."""
    import tensorflow as tf

    shape = tf.shape(image)
    side = tf.minimum(shape[0], shape[1])
    return tf.image.crop_to_bounding_box(image, (shape[0] - side) // 2, (shape[1] - side) // 2, side, side)


def resize_square(square, image_size: int):
    import tensorflow as tf

    return tf.cast(tf.image.resize(square, (image_size, image_size), antialias=True), tf.float32)


_MAGIC = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"BM")  # JPEG, PNG, GIF, BMP signatures


def decode_image(raw, path=""):
    """Decode JPEG/PNG/BMP/GIF bytes to uint8 RGB (grayscale and RGBA are converted)."""
    import tensorflow as tf

    known = tf.reduce_any([tf.equal(tf.strings.substr(raw, 0, len(m)), m) for m in _MAGIC])
    # Name the file in the error: a bare "Unknown image file format" does not say which one.
    check = tf.debugging.Assert(known, ["not a JPEG/PNG/GIF/BMP image (empty or corrupt file):", path])
    with tf.control_dependencies([check]):
        image = tf.io.decode_image(tf.identity(raw), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def decode_square(raw, path=""):
    """uint8 RGB centre square of an encoded image: the same pixels as `centre_square(decode_image(raw))`.

    A JPEG's header gives its size, and `decode_and_crop_jpeg` then decodes only the square's
    window (aligned CelebA: 178 of 218 rows), a fifth less work; other formats decode fully.
    """
    import tensorflow as tf

    def jpeg():
        shape = tf.image.extract_jpeg_shape(raw)
        side = tf.minimum(shape[0], shape[1])
        top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
        # Chroma upsampling at a window's left/right edge differs from the full decode; one MCU (16 px)
        # of margin on each side, cut off afterwards, keeps the pixels identical. Rows need none.
        margin = tf.minimum(left, 16)
        window = tf.stack([top, left - margin, side, tf.minimum(side + 2 * margin, shape[1] - left + margin)])
        return tf.image.decode_and_crop_jpeg(raw, window, channels=3)[:, margin : margin + side]

    is_jpeg = tf.equal(tf.strings.substr(raw, 0, len(_MAGIC[0])), _MAGIC[0])
    image = tf.cond(is_jpeg, jpeg, lambda: centre_square(decode_image(raw, path)))
    image.set_shape([None, None, 3])
    return image


def load_image(path, image_size: int):
    """Read, decode and preprocess one image file (a path string or a string tensor)."""
    import tensorflow as tf

    return resize_square(decode_square(tf.io.read_file(path), path), image_size)


def labels_array(rows: pd.DataFrame, labels: Sequence[str]) -> np.ndarray:
    return rows[list(labels)].to_numpy(dtype=np.float32)


def cohort_keys(y: np.ndarray) -> np.ndarray:
    """One integer per row for its combination of label values (Male x Young -> 0..3)."""
    y = np.asarray(y, dtype=np.int64)
    return (y * (1 << np.arange(y.shape[1]))).sum(axis=1) if y.size else np.zeros(len(y), np.int64)


def make_dataset(
    rows: pd.DataFrame,
    labels: Sequence[str],
    image_size: int,
    batch_size: int,
    training: bool = False,
    cache: bool = False,
    seed: int = 0,
    sampling: str = "natural",
    threads: int | None = None,
    source_weights: Sequence[float] | None = None,
):
    """(image, label) batches: parallel decode -> crop/resize -> [cache] -> shuffle -> batch -> prefetch.

    Random augmentation is not here: `celeba.train` runs `make_augmenter` on whole batches inside the
    training graph, where the accelerator is, so the pipeline only decodes.
    `sampling="balanced"` draws every cohort of the labels (e.g. Male x Young) equally often;
    an epoch keeps the partition's size. `threads`: the pipeline's private thread pool (default: every
    core this process may use). Rows of several sources (a `source` column: CelebA and labelled photo folders)
    are drawn for training with `source_weights` (one per source, in order of first appearance; default: each
    source's share of the rows) by `sample_from_datasets`; an epoch keeps the rows' count.
    """
    import tensorflow as tf

    if sampling not in SAMPLING:
        raise ValueError(f"unknown sampling {sampling!r}; choose from {SAMPLING}")
    y = labels_array(rows, labels)
    sources = list(dict.fromkeys(rows["source"])) if "source" in rows.columns else []
    if training and len(sources) > 1:
        if sampling != "natural":
            raise ValueError("balanced sampling of several sources is not supported: mix them by source weights")
        weights = list(source_weights or [float((rows["source"] == s).mean()) for s in sources])
        if len(weights) != len(sources):
            raise ValueError(f"{len(weights)} source weights for {len(sources)} sources")
        parts = [
            _decoded(
                rows[rows["source"] == s].reset_index(drop=True), labels, image_size, True, cache, seed + i
            ).repeat()
            for i, s in enumerate(sources)
        ]
        total = sum(weights)
        ds = tf.data.Dataset.sample_from_datasets(
            parts, [w / total for w in weights], seed=seed, rerandomize_each_iteration=True
        ).take(len(rows))
    elif training and sampling == "balanced":
        keys = cohort_keys(y)
        parts = [
            _decoded(rows[keys == key], labels, image_size, True, cache, seed + int(key)).repeat()
            for key in np.unique(keys)
        ]
        ds = tf.data.Dataset.sample_from_datasets(parts, seed=seed, rerandomize_each_iteration=True).take(len(rows))
    else:
        ds = _decoded(rows, labels, image_size, training, cache, seed)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(pipeline_options(training, threads))


def pipeline_options(training: bool, threads: int | None = None):
    """tf.data settings for feeding an accelerator.

    Training takes whichever element is ready (no head-of-line blocking); evaluation keeps row order.
    A private thread pool keeps decoding off the threads that run the training step, with one thread
    per op (parallelism comes from the parallel map). Under a multi-worker strategy every worker reads
    the whole list and keeps its share of elements (DATA): there are no per-worker files to split.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = not training
    options.autotune.enabled = True
    options.threading.private_threadpool_size = threads or usable_cores()
    options.threading.max_intra_op_parallelism = 1
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


SAMPLING = ("natural", "balanced")


def _decoded(rows: pd.DataFrame, labels: Sequence[str], image_size: int, shuffle: bool, cache: bool, seed: int):
    """Unbatched (image, label) pairs; shuffles cheap paths, or decoded images once they are cached."""
    import tensorflow as tf

    if is_records(rows["path"]):  # a prepared folder: read the shards
        ds = records_dataset(rows, labels, image_size, shuffle and not cache, seed)
        if shuffle and not cache:
            ds = ds.shuffle(min(len(rows), 10_000), seed=seed, reshuffle_each_iteration=True)
    else:
        ds = tf.data.Dataset.from_tensor_slices((rows["path"].to_numpy(dtype=str), labels_array(rows, labels)))
        if shuffle and not cache:
            ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(lambda path, y: (load_image(path, image_size), y), num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
        if shuffle:
            ds = ds.shuffle(min(len(rows), 10_000), seed=seed, reshuffle_each_iteration=True)
    return ds


# --------------------------------------------------------------------------- prepared TFRecords
# Written by `celeba.prepare`, read here with the rest of the pipeline: the Tensorleap bundle ships this
# file but not prepare.py, which imports the CLI layer (config, cli).

PREPARED_FILE = "prepared.json"
INDEX_FILE = "index.csv"
RECORD_SUFFIX = ".tfrecord"


def is_prepared(folder: Path | str) -> bool:
    return is_file(join(folder, PREPARED_FILE))


def load_prepared_index(folder: Path | str) -> pd.DataFrame:
    """`load_index` of a prepared folder: the same columns, `path` naming each row's shard file."""
    meta = json.loads(read_text(join(folder, PREPARED_FILE)))
    index = join(folder, meta.get("index", INDEX_FILE))  # `index.<tag>.csv`; `index.csv` in older folders
    try:
        frame = pd.read_csv(io.StringIO(read_text(index)), dtype={"image_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, FileNotFoundError) as exc:
        raise CelebADataError(f"{index}: unreadable index of a prepared folder ({exc})") from None
    frame.insert(1, "path", [join(folder, name) for name in frame.pop("shard")])
    frame[list(ATTRIBUTES)] = frame[list(ATTRIBUTES)].astype(np.int8)
    frame.attrs["image_size"] = int(meta["image_size"])
    return frame


def is_records(paths: Sequence[str]) -> bool:
    return len(paths) > 0 and all(str(p).endswith(RECORD_SUFFIX) for p in paths)


def records_dataset(rows: pd.DataFrame, labels: Sequence[str], image_size: int, shuffle: bool, seed: int):
    """Unbatched (float32 image, label) pairs of `rows` read from their shards, in record order unless shuffled
    (rows from `split` of a prepared index are in record order, so evaluation keeps row order).

    Only the rows asked for are kept (a limit, one cohort of balanced sampling); labels come from `rows`.
    Images stored at another size are resized like `load_image` does.
    """
    import tensorflow as tf

    ids = rows["image_id"].to_numpy(dtype=str)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(ids), tf.range(len(ids), dtype=tf.int64)), -1
    )
    y = tf.constant(labels_array(rows, labels))
    shards = list(dict.fromkeys(rows["path"]))  # unique, in order
    if shuffle:
        files = tf.data.Dataset.from_tensor_slices(shards).shuffle(len(shards), seed=seed)
        ds = files.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(4, len(shards)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=False,
        )
    else:
        ds = tf.data.TFRecordDataset(shards)
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "image_id": tf.io.FixedLenFeature([], tf.string)}

    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        return example["image"], table.lookup(example["image_id"])

    def decode(image, row):
        image = tf.io.decode_raw(image, tf.uint8)
        side = tf.cast(tf.math.sqrt(tf.cast(tf.size(image) // 3, tf.float32)) + 0.5, tf.int32)
        image = tf.reshape(image, [side, side, 3])
        image = tf.cond(
            tf.equal(side, image_size), lambda: tf.cast(image, tf.float32), lambda: resize_square(image, image_size)
        )
        image.set_shape([image_size, image_size, 3])
        return image, tf.gather(y, row)

    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).filter(lambda image, row: row >= 0)
    # A known length (Keras plans epochs with it); a row missing from the shards fails loudly here.
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(rows)))
    return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def make_augmenter(seed: int = 0, framing: bool = True, strength: float = 1.0):
    """Small, label-preserving augmentations for training batches (a flipped face keeps its gender and age).

    `framing` adds shift (up to 12% of the side) and scale (0.8-1.2) jitter, so that a face framed a little
    differently from CelebA's alignment (a phone photo, another detector's crop) is still scored well.
    `strength` scales every range (rotation, shift, scale, brightness, contrast), capped where a layer's range ends;
    the flip is always on.
    """
    import keras

    def scaled(value: float, cap: float = 0.95) -> float:
        return min(value * strength, cap)

    framing_layers = (
        [
            keras.layers.RandomTranslation(scaled(0.12), scaled(0.12), fill_mode="reflect", seed=seed),
            keras.layers.RandomZoom((-scaled(0.2), scaled(0.2)), fill_mode="reflect", seed=seed),
        ]
        if framing
        else [keras.layers.RandomZoom(scaled(0.08), fill_mode="reflect", seed=seed)]
    )
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(scaled(0.03, cap=0.5), fill_mode="reflect", seed=seed),
            *framing_layers,
            keras.layers.RandomBrightness(scaled(0.1, cap=1.0), value_range=(0, 255), seed=seed),
            keras.layers.RandomContrast(scaled(0.1), seed=seed),
        ],
        name="augment",
    )
