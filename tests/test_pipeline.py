"""The input pipeline at scale: JPEG crop-decode, tf.data options, non-local file systems, TFRecords."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config
from PIL import Image

from celeba import data


def _full_decode_square(raw):
    """Today's reference: decode the whole image, then cut the centre square."""
    return data.centre_square(data.decode_image(raw)).numpy()


def test_jpeg_crop_decode_matches_full_decode_on_the_sample(sample_dir):
    paths = sorted((sample_dir / "img_align_celeba").glob("*.jpg"))
    worst = 0  # measured: 0 on all 299 images (CelebA crops rows only)
    for path in paths:
        raw = tf.io.read_file(str(path))
        square = data.decode_square(raw).numpy()
        reference = _full_decode_square(raw)
        assert square.shape == reference.shape == (178, 178, 3)
        worst = max(worst, int(np.abs(square.astype(int) - reference.astype(int)).max()))
    assert worst <= 1, f"crop-decode differs from decode+crop by {worst} grey levels"


@pytest.mark.parametrize(
    "size,mode,options",
    [
        ((301, 217), "RGB", {"subsampling": 2}),  # landscape, 4:2:0, crop window not on an MCU boundary
        ((217, 301), "RGB", {"progressive": True}),
        ((150, 190), "L", {}),  # grayscale becomes RGB like decode_image does
        ((640, 480), "RGB", {"subsampling": 1, "quality": 70}),  # 4:2:2: chroma edges need the 16 px margin
        ((480, 640), "RGB", {"subsampling": 2, "progressive": True}),
    ],
)
def test_jpeg_crop_decode_on_other_shapes(tmp_path, size, mode, options):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path = tmp_path / "x.jpg"
    Image.fromarray(pixels).convert(mode).save(path, "JPEG", **options)
    raw = tf.io.read_file(str(path))
    square, reference = data.decode_square(raw).numpy(), _full_decode_square(raw)
    assert square.shape == reference.shape == (min(size), min(size), 3)
    np.testing.assert_array_equal(square, reference)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "GIF"])
def test_non_jpeg_pixels_are_unchanged(tmp_path, fmt):
    rng = np.random.default_rng(1)
    path = tmp_path / f"x.{fmt.lower()}"
    Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(path, fmt)
    raw = tf.io.read_file(str(path))
    expected = data.preprocess_image(data.decode_image(raw), 64).numpy()
    np.testing.assert_array_equal(data.load_image(str(path), 64).numpy(), expected)


def test_pipeline_options():
    train, evaluation = data.pipeline_options(True, threads=1), data.pipeline_options(False)
    assert not train.deterministic and evaluation.deterministic
    assert train.threading.private_threadpool_size == 1 and train.threading.max_intra_op_parallelism == 1
    assert evaluation.threading.private_threadpool_size == data.usable_cores()
    assert train.experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA


@pytest.fixture
def ram_sample(sample_dir):
    """12 sample images and the annotation files on TensorFlow's in-memory file system (a non-local scheme)."""
    folder = f"ram://celeba-{np.random.default_rng().integers(1 << 30)}"
    tf.io.gfile.makedirs(f"{folder}/img_align_celeba")
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt", "identity_CelebA.txt"):
        tf.io.gfile.copy(str(sample_dir / name), f"{folder}/{name}")
    images = sorted((sample_dir / "img_align_celeba").iterdir())[:12]
    for path in images:
        tf.io.gfile.copy(str(path), f"{folder}/img_align_celeba/{path.name}")
    yield folder
    tf.io.gfile.rmtree(folder)


def test_data_on_a_non_local_file_system(ram_sample, sample_dir):
    from pathlib import Path

    index = data.load_index(Path(ram_sample), check_images=True)  # pathlib mangles 'ram://'; it is repaired
    local = data.load_index(sample_dir)
    assert len(index) == 12 and all(p.startswith(f"{ram_sample}/img_align_celeba/") for p in index["path"])
    merged = index.merge(local, on="image_id", suffixes=("", "_local"))
    assert (merged["Male"] == merged["Male_local"]).all() and (merged["identity"] == merged["identity_local"]).all()
    images = np.concatenate([x for x, _ in data.make_dataset(index, ["Male"], 32, 5)])
    expected = np.stack([data.load_image(p, 32).numpy() for p in merged["path_local"]])
    np.testing.assert_array_equal(images, expected)


def test_missing_files_on_a_non_local_file_system_are_named(ram_sample):
    tf.io.gfile.remove(f"{ram_sample}/list_eval_partition.txt")
    with pytest.raises(data.CelebADataError, match=f"{ram_sample}: none of list_eval_partition.txt"):
        data.load_index(ram_sample)
    with pytest.raises(data.CelebADataError, match="ram://nowhere: data folder not found"):
        data.load_index("ram://nowhere")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, sample_dir):
    """The sample written as TFRecords at 48 px by the `prepare` command, in shards of 40 images."""
    import contextlib
    import io

    from celeba.cli import prepare_main

    out = tmp_path_factory.mktemp("records") / "celeba48"
    argv = ["--data-dir", str(sample_dir), "--out", str(out), "--image-size", "48", "--shard-images", "40"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as exit_info:
        prepare_main(argv)
    assert exit_info.value.code == 0
    assert "wrote 299 images at 48 px" in printed.getvalue()
    return out


def test_prepare_writes_shards_an_index_and_its_summary(prepared, sample_dir):
    import json

    summary = json.loads((prepared / "prepared.json").read_text())
    local = data.load_index(sample_dir)
    assert summary["image_size"] == 48 and summary["images"] == len(local) == 299
    assert summary["partitions"] == local["partition"].value_counts().to_dict()
    for partition, names in summary["shards"].items():
        assert len(names) == -(-summary["partitions"][partition] // 40)
        assert all((prepared / name).is_file() for name in names)
    index = data.load_index(prepared)
    assert list(index.columns) == list(local.columns)
    import tensorflow as tf

    for path, rows in index.groupby("path"):  # every shard holds exactly the rows the index names for it
        records = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
        ids = [r.features.feature["image_id"].bytes_list.value[0].decode() for r in records]
        assert ids == list(rows["image_id"]), path
    pd_local = local.set_index("image_id").loc[index["image_id"]]
    np.testing.assert_array_equal(index[list(data.ATTRIBUTES)].to_numpy(), pd_local[list(data.ATTRIBUTES)].to_numpy())
    assert (index["partition"].to_numpy() == pd_local["partition"].to_numpy()).all()


def test_records_give_the_jpeg_pipeline_pixels_rounded(prepared, sample_dir):
    rows = data.split(data.load_index(prepared), "test", 50)
    jpeg_rows = data.split(data.load_index(sample_dir), "test", 50)
    assert list(rows["image_id"]) == list(jpeg_rows["image_id"])
    batches = data.make_dataset(rows, ["Male", "Young"], 48, 16)
    x, y = map(np.concatenate, zip(*[(a.numpy(), b.numpy()) for a, b in batches]))
    x_jpeg = np.concatenate([a.numpy() for a, _ in data.make_dataset(jpeg_rows, ["Male"], 48, 16)])
    assert x.shape == (50, 48, 48, 3) and np.abs(x - x_jpeg).max() <= 0.5 + 1e-4  # uint8 rounding only
    np.testing.assert_array_equal(y, data.labels_array(jpeg_rows, ["Male", "Young"]))
    resized = np.concatenate([a.numpy() for a, _ in data.make_dataset(rows.iloc[:4], ["Male"], 32, 4)])
    assert resized.shape == (4, 32, 32, 3)  # another training size is resized on the fly


def test_records_training_epochs_see_every_row_once(prepared):
    rows = data.split(data.load_index(prepared), "train", 60)  # 60 of the 2 first shards' rows
    ds = data.make_dataset(rows, ["Male"], 48, 8, training=True, seed=3)
    for _ in range(2):
        labels = np.concatenate([y.numpy() for _, y in ds])
        assert len(labels) == 60 and labels.sum() == data.labels_array(rows, ["Male"]).sum()
    balanced = data.make_dataset(rows, ["Male", "Young"], 48, 60, training=True, sampling="balanced")
    _, y = next(iter(balanced))
    assert y.shape == (60, 2) and len(np.unique(data.cohort_keys(y.numpy()))) > 1


def test_prepare_bad_input_is_one_line(tmp_path, capsys):
    from celeba.cli import prepare_main

    with pytest.raises(SystemExit) as exit_info:
        prepare_main(["--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'nope'}: data folder not found (download CelebA and pass --data-dir)"
    )


def test_train_and_evaluate_read_a_prepared_folder(prepared, tmp_path):
    import json

    from celeba.config import EvalConfig
    from celeba.evaluate import evaluate
    from celeba.train import train

    train(tiny_config(tmp_path, "records", data_dir=prepared, image_size=48, limit=16, batch_size=8))
    card = json.loads((tmp_path / "records.json").read_text())
    assert card["data"]["train"] == card["data"]["validation"] == 16
    result = evaluate(EvalConfig(model=tmp_path / "records.keras", data_dir=prepared, limit=10))
    assert result.n == 10 and set(result.labels) == {"Male", "Young"}
