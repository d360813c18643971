"""Prepared TFRecords (`celeba prepare`): the index of a prepared folder and its shards as a dataset."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from celeba.data.annotations import ATTRIBUTES, CelebADataError, is_file, join, labels_array, read_text
from celeba.data.images import resize_square

log = logging.getLogger(__name__)


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


def records_dataset(rows: pd.DataFrame, labels: Sequence[str], image_size: int, shuffle: bool, seed: int) -> Any:
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

    def parse(record: Any) -> Any:
        example = tf.io.parse_single_example(record, spec)
        return example["image"], table.lookup(example["image_id"])

    def decode(image: Any, row: Any) -> Any:
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
