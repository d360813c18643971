"""`poetry run prepare`: a CelebA folder -> sharded TFRecords, for training from remote storage.

Each example holds the image already cropped and resized (uint8, `image_size` square, the pixels of
`celeba.data.load_image` rounded), all 40 attributes and the image id. Reading a few large files instead
of 200,000 small JPEGs suits object storage (gs://, s3://), and nothing is decoded or resized while
training. The folder also gets `index.csv` (the `load_index` table, one row per example, in record order)
and `prepared.json`; `--data-dir` of train and evaluate accepts it like a CelebA folder (the reading side,
`is_prepared` and `records_dataset`, lives in `celeba.data` with the rest of the pipeline).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from celeba.config import opt
from celeba.data import (
    ATTRIBUTES,
    INDEX_FILE,
    PARTITIONS,
    PREPARED_FILE,
    RECORD_SUFFIX,
    SAMPLE_DIR,
    fs_path,
    join,
    labels_array,
    load_index,
    make_dataset,
    split,
)

log = logging.getLogger(__name__)


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
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image": feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
                "image_id": feature(bytes_list=tf.train.BytesList(value=[image_id.encode()])),
                "attributes": feature(int64_list=tf.train.Int64List(value=attributes.tolist())),
            }
        )
    ).SerializeToString()


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
        ids = rows["image_id"].to_numpy(dtype=str)
        images = (image for x, _ in make_dataset(rows, [], cfg.image_size, cfg.batch_size) for image in x.numpy())
        for shard, name in enumerate(names):  # exactly shard_images rows per shard, as the index says
            with tf.io.TFRecordWriter(join(out, name)) as writer:
                for position in range(shard * cfg.shard_images, min(len(rows), (shard + 1) * cfg.shard_images)):
                    image = np.clip(np.rint(next(images)), 0, 255).astype(np.uint8)
                    writer.write(_example(image, ids[position], attributes[position]))
            log.info("wrote %s", join(out, name))
        rows = rows.assign(path=[names[i // cfg.shard_images] for i in range(len(rows))])
        parts.append(rows)
        shards[partition] = names
    prepared = pd.concat(parts, ignore_index=True).rename(columns={"path": "shard"})
    with tf.io.gfile.GFile(join(out, INDEX_FILE), "w") as f:
        f.write(prepared.to_csv(index=False))
    summary = {
        "image_size": cfg.image_size,
        "source": fs_path(cfg.data_dir),
        "images": len(prepared),
        "partitions": {p: int(n) for p, n in prepared["partition"].value_counts().items()},
        "shards": shards,
        "attributes": list(ATTRIBUTES),
    }
    with tf.io.gfile.GFile(join(out, PREPARED_FILE), "w") as f:
        f.write(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> None:
    from celeba.cli import prepare_main

    prepare_main(argv)


if __name__ == "__main__":
    main()
