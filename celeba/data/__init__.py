"""CelebA reading and the tf.data input pipeline, in four modules (each importing only the ones before it):

- `annotations`: the file names, the readers of CelebA's annotation files, file-system helpers, label arrays;
- `images`: decoding an image file, the centre square the model sees, resizing, the training augmenter;
- `records`: folders prepared as TFRecords by `celeba prepare`;
- `pipeline`: the index of usable images (`load_index`, `split`) and `make_dataset`.

Everything that turns files into model inputs lives here, so that training, evaluation, prediction and the
Tensorleap encoders see exactly the same pixels. `from celeba.data import X` is the way in.
"""

from celeba.data.annotations import (
    ATTR_FILES,
    ATTRIBUTES,
    IDENTITY_FILE,
    IMAGE_DIR,
    LANDMARKS,
    LANDMARKS_FILE,
    PARTITION_FILES,
    PARTITIONS,
    SAMPLE_DIR,
    CelebADataError,
    _find_optional,
    check_labels,
    cohort_keys,
    fs_path,
    image_dir,
    is_dir,
    is_file,
    is_url,
    join,
    labels_array,
    pose_proxies,
    read_attributes,
    read_identities,
    read_landmarks,
    read_partitions,
    read_text,
)
from celeba.data.images import (
    centre_square,
    decode_image,
    decode_square,
    find_bad_images,
    load_image,
    make_augmenter,
    preprocess_image,
    resize_square,
)
from celeba.data.pipeline import SAMPLING, load_index, make_dataset, pipeline_options, split, usable_cores
from celeba.data.records import (
    INDEX_FILE,
    PREPARED_FILE,
    RECORD_SUFFIX,
    is_prepared,
    is_records,
    load_prepared_index,
    records_dataset,
)

__all__ = [
    "ATTRIBUTES",
    "ATTR_FILES",
    "IDENTITY_FILE",
    "IMAGE_DIR",
    "INDEX_FILE",
    "LANDMARKS",
    "LANDMARKS_FILE",
    "PARTITIONS",
    "PARTITION_FILES",
    "PREPARED_FILE",
    "RECORD_SUFFIX",
    "SAMPLE_DIR",
    "SAMPLING",
    "CelebADataError",
    "_find_optional",
    "centre_square",
    "check_labels",
    "cohort_keys",
    "decode_image",
    "decode_square",
    "find_bad_images",
    "fs_path",
    "image_dir",
    "is_dir",
    "is_file",
    "is_prepared",
    "is_records",
    "is_url",
    "join",
    "labels_array",
    "load_image",
    "load_index",
    "load_prepared_index",
    "make_augmenter",
    "make_dataset",
    "pipeline_options",
    "pose_proxies",
    "preprocess_image",
    "read_attributes",
    "read_identities",
    "read_landmarks",
    "read_partitions",
    "read_text",
    "records_dataset",
    "resize_square",
    "split",
    "usable_cores",
]
