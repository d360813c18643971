"""`poetry run prepare`: a CelebA folder -> sharded TFRecords, for training from remote storage.

Each example holds the image already cropped and resized (uint8, `image_size` square, the pixels of
`celeba.data.load_image` rounded), all 40 attributes and the image id. Reading a few large files instead
of 200,000 small JPEGs suits object storage (gs://, s3://), and nothing is decoded or resized while
training. The folder also gets `index.csv` (the `load_index` table, one row per example, in record order)
and `prepared.json`; `--data-dir` of train and evaluate accepts it like a CelebA folder.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from celeba.config import opt
from celeba.data import (ATTRIBUTES, PARTITIONS, SAMPLE_DIR, CelebADataError, fs_path, is_file, join, labels_array,
                         load_index, make_dataset, read_text, resize_square, split)

log = logging.getLogger(__name__)

PREPARED_FILE = "prepared.json"
INDEX_FILE = "index.csv"
RECORD_SUFFIX = ".tfrecord"


@dataclass
class PrepareConfig:
    """Write a CelebA folder as sharded TFRecords (uint8 images at the target size, 40 attributes, image ids)."""

    data_dir: Path = opt(SAMPLE_DIR, "a CelebA folder (local or gs://...)")
    out: Path = opt(Path("data/celeba-records"), "the prepared folder (local or gs://...)")
    image_size: int = opt(128, "stored side; training at another size resizes on the fly")
    shard_images: int = opt(2000, "images per shard file (2000 x 128 px = 98 MB)")
    limit: int | None = opt(None, "at most N images from every partition", none="all")
    check_images: bool = opt(True, "decode every image once up front and skip unreadable ones")
    batch_size: int = opt(256, "images decoded per step while writing")


def _example(image: np.ndarray, image_id: str, attributes: np.ndarray):
    import tensorflow as tf

    feature = tf.train.Feature
    return tf.train.Example(features=tf.train.Features(feature={
        "image": feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
        "image_id": feature(bytes_list=tf.train.BytesList(value=[image_id.encode()])),
        "attributes": feature(int64_list=tf.train.Int64List(value=attributes.tolist())),
    })).SerializeToString()


def prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Decode every image once (the training preprocessing), write shards per partition, then the index."""
    import tensorflow as tf

    index = load_index(cfg.data_dir, check_images=cfg.check_images)
    out = fs_path(cfg.out)
    tf.io.gfile.makedirs(out)
    parts, shards = [], {}
    for partition in PARTITIONS.values():
        rows = split(index, partition, cfg.limit)
        if rows.empty:
            continue
        n_shards = -(-len(rows) // cfg.shard_images)
        names = [f"{partition}-{i:05d}-of-{n_shards:05d}{RECORD_SUFFIX}" for i in range(n_shards)]
        attributes = labels_array(rows, ATTRIBUTES).astype(np.int64)
        images = (x.numpy() for x, _ in make_dataset(rows, [], cfg.image_size, cfg.batch_size))
        position = 0
        for shard, name in enumerate(names):
            with tf.io.TFRecordWriter(join(out, name)) as writer:
                while position < min(len(rows), (shard + 1) * cfg.shard_images):
                    batch = np.clip(np.rint(next(images)), 0, 255).astype(np.uint8)
                    for image in batch:
                        writer.write(_example(image, rows.at[position, "image_id"], attributes[position]))
                        position += 1
            log.info("wrote %s", join(out, name))
        rows = rows.assign(path=[names[i // cfg.shard_images] for i in range(len(rows))])
        parts.append(rows)
        shards[partition] = names
    prepared = pd.concat(parts, ignore_index=True).rename(columns={"path": "shard"})
    with tf.io.gfile.GFile(join(out, INDEX_FILE), "w") as f:
        f.write(prepared.to_csv(index=False))
    summary = {"image_size": cfg.image_size, "source": fs_path(cfg.data_dir), "images": len(prepared),
               "partitions": {p: int(n) for p, n in prepared["partition"].value_counts().items()},
               "shards": shards, "attributes": list(ATTRIBUTES)}
    with tf.io.gfile.GFile(join(out, PREPARED_FILE), "w") as f:
        f.write(json.dumps(summary, indent=2))
    return summary


# --------------------------------------------------------------------------- reading


def is_prepared(folder: Path | str) -> bool:
    return is_file(join(folder, PREPARED_FILE))


def load_prepared_index(folder: Path | str) -> pd.DataFrame:
    """`load_index` of a prepared folder: the same columns, `path` naming each row's shard file."""
    meta = json.loads(read_text(join(folder, PREPARED_FILE)))
    try:
        frame = pd.read_csv(io.StringIO(read_text(join(folder, INDEX_FILE))), dtype={"image_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, FileNotFoundError) as exc:
        raise CelebADataError(f"{join(folder, INDEX_FILE)}: unreadable index of a prepared folder ({exc})") from None
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
        tf.lookup.KeyValueTensorInitializer(tf.constant(ids), tf.range(len(ids), dtype=tf.int64)), -1)
    y = tf.constant(labels_array(rows, labels))
    shards = list(dict.fromkeys(rows["path"]))  # unique, in order
    if shuffle:
        files = tf.data.Dataset.from_tensor_slices(shards).shuffle(len(shards), seed=seed)
        ds = files.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(shards)),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
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
        image = tf.cond(tf.equal(side, image_size), lambda: tf.cast(image, tf.float32),
                        lambda: resize_square(image, image_size))
        image.set_shape([image_size, image_size, 3])
        return image, tf.gather(y, row)

    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).filter(lambda image, row: row >= 0)
    # A known length (Keras plans epochs with it); a row missing from the shards fails loudly here.
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(rows)))
    return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def main(argv: list[str] | None = None) -> None:
    from celeba.cli import prepare_main

    prepare_main(argv)


if __name__ == "__main__":
    main()
