"""The index of usable images and the tf.data pipeline that turns its rows into batches.

Training, evaluation, prediction and the Tensorleap encoders all read through `make_dataset`, so they see
exactly the same pixels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from celeba.data.annotations import (
    ATTR_FILES,
    IDENTITY_FILE,
    LANDMARKS_FILE,
    PARTITION_FILES,
    PARTITIONS,
    CelebADataError,
    _error,
    _find,
    _find_optional,
    cohort_keys,
    fs_path,
    image_dir,
    is_dir,
    is_file,
    join,
    labels_array,
    pose_proxies,
    read_attributes,
    read_identities,
    read_landmarks,
    read_partitions,
)
from celeba.data.images import find_bad_images, load_image
from celeba.data.records import is_prepared, is_records, load_prepared_index, records_dataset

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the index


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
) -> Any:
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


def pipeline_options(training: bool, threads: int | None = None) -> Any:
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


def _decoded(rows: pd.DataFrame, labels: Sequence[str], image_size: int, shuffle: bool, cache: bool, seed: int) -> Any:
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
