"""`poetry run prepare`: a CelebA folder -> sharded TFRecords, for training from remote storage.

Each example holds the image already cropped and resized (uint8, `image_size` square, the pixels of
`celeba.data.load_image` rounded), all 40 attributes and the image id. Reading a few large files instead
of 200,000 small JPEGs suits object storage (gs://, s3://), and nothing is decoded or resized while
training. The folder also gets `index.<tag>.csv` (the `load_index` table, one row per example, in record
order) and `prepared.json`, which names the index and the shards and is written last; `--data-dir` of train
and evaluate accepts the folder like a CelebA folder (the reading side, `is_prepared` and `records_dataset`,
lives in `celeba.data` with the rest of the pipeline).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import re
import secrets
from collections.abc import Iterator
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
    read_text,
    split,
)
from celeba.files import DiskFullError

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


def _example(image: np.ndarray, image_id: str, attributes: np.ndarray) -> Any:
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
    """Decode every image once (the training preprocessing), write shards per partition, then the index.

    Over an earlier prepared folder the folder is always one complete output, the old or the new: every file of
    this run has a new name (a generation tag) and is written under a temporary name then renamed; the commit is
    the last step, the atomic rename of `prepared.json` (which names the index and the shards). Only then are the
    earlier output's files deleted. A failure (a full disk, Ctrl-C) deletes this run's files and keeps the old
    output; a SIGKILL can leave some, which the next run deletes.
    """
    import tensorflow as tf

    index = load_index(cfg.data_dir, check_images=cfg.check_images)
    out = fs_path(cfg.out)
    tf.io.gfile.makedirs(out)
    remove_unreferenced(out)  # what a killed run left
    generation = secrets.token_hex(4)
    written: list[str] = []
    try:
        parts, shards = [], {}
        for partition in PARTITIONS.values():
            rows = split(index, partition, cfg.limit)
            if rows.empty:
                continue
            n_shards = -(-len(rows) // cfg.shard_images)
            names = [f"{partition}-{i:05d}-of-{n_shards:05d}.{generation}{RECORD_SUFFIX}" for i in range(n_shards)]
            attributes = labels_array(rows, ATTRIBUTES).astype(np.int64)
            ids = rows["image_id"].to_numpy(dtype=str)
            images = (image for x, _ in make_dataset(rows, [], cfg.image_size, cfg.batch_size) for image in x.numpy())
            for shard, name in enumerate(names):  # exactly shard_images rows per shard, as the index says
                with _atomic(out, name, written) as tmp, tf.io.TFRecordWriter(tmp) as writer:
                    for position in range(shard * cfg.shard_images, min(len(rows), (shard + 1) * cfg.shard_images)):
                        image = np.clip(np.rint(next(images)), 0, 255).astype(np.uint8)
                        writer.write(_example(image, ids[position], attributes[position]))
                log.info("wrote %s", join(out, name))
            rows = rows.assign(path=[names[i // cfg.shard_images] for i in range(len(rows))])
            parts.append(rows)
            shards[partition] = names
        prepared = pd.concat(parts, ignore_index=True).rename(columns={"path": "shard"})
        index_name = f"index.{generation}.csv"
        with _atomic(out, index_name, written) as tmp, tf.io.gfile.GFile(tmp, "w") as f:
            f.write(prepared.to_csv(index=False))
        summary = {
            "image_size": cfg.image_size,
            "source": fs_path(cfg.data_dir),
            "images": len(prepared),
            "partitions": {p: int(n) for p, n in prepared["partition"].value_counts().items()},
            "index": index_name,
            "shards": shards,
            "attributes": list(ATTRIBUTES),
        }
        with _atomic(out, PREPARED_FILE, []) as tmp, tf.io.gfile.GFile(tmp, "w") as f:  # the commit
            f.write(json.dumps(summary, indent=2))
    except BaseException:
        for path in written:  # this run's files; the earlier output stays as it was
            _remove(path)
        raise
    remove_unreferenced(out)  # the earlier output's files
    return summary


def _remove(path: str) -> None:
    import tensorflow as tf

    with contextlib.suppress(tf.errors.NotFoundError, OSError):
        tf.io.gfile.remove(path)


@contextlib.contextmanager
def _atomic(out: str, name: str, written: list[str]) -> Iterator[str]:
    """A temporary path to write `out/name` to; renamed to it on success. Both paths go to `written` (for the
    clean-up after a failure); a full disk or a refused write is an OSError naming the file."""
    import tensorflow as tf

    tmp, final = join(out, f".{name}.tmp"), join(out, name)
    written += [tmp, final]
    try:
        yield tmp
        tf.io.gfile.rename(tmp, final, overwrite=True)
    except tf.errors.OpError as exc:
        raise _os_error(exc, tmp, out) from None
    finally:
        _remove(tmp)


def _os_error(exc: Exception, path: str, out: str) -> Exception:
    """TensorFlow's file errors as the OSError they are (the CLI prints `<file>: <why>` and exits 2)."""
    import tensorflow as tf

    text = str(exc)
    if isinstance(exc, tf.errors.ResourceExhaustedError) or "No space left" in text or "quota" in text.lower():
        return DiskFullError(path, f"the earlier output in {out} is kept; free space and run prepare again")
    if isinstance(exc, tf.errors.PermissionDeniedError):
        return OSError(errno.EACCES, "permission denied", path)
    return exc


_OUTPUT_FILE = re.compile(
    rf"^(?:\w+-\d{{5}}-of-\d{{5}}(?:\.[0-9a-f]+)?{re.escape(RECORD_SUFFIX)}|index(?:\.[0-9a-f]+)?\.csv)$"
)


def remove_unreferenced(out: str) -> list[str]:
    """Delete the shards, indexes and temporaries in `out` that its `prepared.json` does not name (an earlier
    output, or what a killed run left). Other files are left alone."""
    import tensorflow as tf

    keep: set[str] = set()
    try:
        meta = json.loads(read_text(join(out, PREPARED_FILE)))
        keep = {meta.get("index", INDEX_FILE), *(n for names in meta["shards"].values() for n in names)}
    except (tf.errors.NotFoundError, FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no (readable) output: none of these files is one
    stale = [
        join(out, name)
        for name in tf.io.gfile.listdir(out)
        if name not in keep and (_OUTPUT_FILE.match(name) or (name.startswith(".") and name.endswith(".tmp")))
    ]
    for path in stale:
        _remove(path)
    return stale
