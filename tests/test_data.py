"""Reading CelebA files and the tf.data pipeline, on the embedded sample and on generated bad input."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from celeba import data
from celeba.data import CelebADataError


@pytest.fixture
def sample_copy(tmp_path: Path, sample_dir: Path) -> Path:
    """A writable copy of the sample with 20 images, so tests can break it."""
    dest = tmp_path / "celeba"
    shutil.copytree(sample_dir, dest, ignore=shutil.ignore_patterns("img_align_celeba"))
    (dest / "img_align_celeba").mkdir()
    for path in sorted((sample_dir / "img_align_celeba").iterdir())[:20]:
        shutil.copy(path, dest / "img_align_celeba" / path.name)
    return dest


def test_read_attributes_maps_minus_one_to_zero(sample_dir):
    attrs = data.read_attributes(sample_dir / "list_attr_celeba.txt")
    lines = (sample_dir / "list_attr_celeba.txt").read_text().splitlines()
    assert len(attrs) == int(lines[0]) == len(lines) - 2
    assert tuple(attrs.columns) == data.ATTRIBUTES
    first = lines[2].split()
    expected = [1 if v == "1" else 0 for v in first[1:]]
    assert attrs.loc[first[0]].tolist() == expected
    assert set(np.unique(attrs.to_numpy())) <= {0, 1}


def test_kaggle_csv_layout_gives_the_same_index(sample_copy):
    txt_index = data.load_index(sample_copy)
    attrs = pd.read_csv(sample_copy / "list_attr_celeba.txt", sep=r"\s+", skiprows=1)
    attrs.rename_axis("image_id").to_csv(sample_copy / "list_attr_celeba.csv")
    parts = pd.read_csv(
        sample_copy / "list_eval_partition.txt", sep=r"\s+", header=None, names=["image_id", "partition"]
    )
    parts.to_csv(sample_copy / "list_eval_partition.csv", index=False)
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        (sample_copy / name).unlink()
    # Kaggle also nests the images one level deeper.
    (sample_copy / "img_align_celeba").rename(sample_copy / "inner")
    (sample_copy / "img_align_celeba").mkdir()
    (sample_copy / "inner").rename(sample_copy / "img_align_celeba" / "img_align_celeba")
    csv_index = data.load_index(sample_copy)
    pd.testing.assert_frame_equal(txt_index.drop(columns="path"), csv_index.drop(columns="path"))


def test_load_index_skips_rows_without_images_and_says_how_many(sample_dir, caplog):
    with caplog.at_level(logging.WARNING):
        index = data.load_index(sample_dir)
    assert len(index) == 299 and not caplog.records  # the sample is complete
    assert set(index["partition"]) == {"train", "validation", "test"}
    assert all(Path(p).is_file() for p in index["path"])


def test_missing_images_are_skipped_with_a_count(sample_copy, caplog):
    with caplog.at_level(logging.WARNING):
        index = data.load_index(sample_copy)
    assert len(index) == 20
    assert "279 of 299 annotated images are not in" in caplog.text


def test_missing_data_folder_names_it(tmp_path):
    with pytest.raises(CelebADataError, match=f"{tmp_path / 'nope'}: data folder not found"):
        data.load_index(tmp_path / "nope")


def test_missing_annotation_file_is_named(sample_copy):
    (sample_copy / "list_attr_celeba.txt").unlink()
    with pytest.raises(CelebADataError, match="list_attr_celeba.txt, list_attr_celeba.csv found"):
        data.load_index(sample_copy)


def test_truncated_attribute_file(sample_copy):
    path = sample_copy / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-5]) + "\n")  # lost rows: the declared count no longer matches
    with pytest.raises(CelebADataError, match=r"list_attr_celeba.txt: declares 299 rows but has 294"):
        data.read_attributes(path)
    lines[0] = str(len(lines) - 2)
    lines[-1] = lines[-1][:40]  # a row cut in the middle
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CelebADataError, match="incomplete or has values other than -1/1"):
        data.read_attributes(path)


def test_attribute_file_without_count_line(sample_copy):
    path = sample_copy / "list_attr_celeba.txt"
    path.write_text("\n".join(path.read_text().splitlines()[1:]))
    with pytest.raises(CelebADataError, match="first line must be the row count"):
        data.read_attributes(path)


def test_bad_partition_value_names_the_line(sample_copy):
    path = sample_copy / "list_eval_partition.txt"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].split()[0] + " 7"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CelebADataError, match="line 4: partition must be 0, 1 or 2"):
        data.read_partitions(path)


def test_unknown_label_lists_the_choices():
    assert data.check_labels(["Male", "Smiling"]) == ("Male", "Smiling")
    with pytest.raises(CelebADataError, match="unknown attribute.*'Mael'.*choose from: 5_o_Clock_Shadow"):
        data.check_labels(["Mael"])


def test_partitions_follow_the_official_celeba_split(sample_dir):
    """CelebA's list_eval_partition: 0 = train (images 000001-162770), 1 = validation (162771-182637),
    2 = test (182638-202599). The sample keeps the official ids, so each partition's ids must lie in its range."""
    index = data.load_index(sample_dir)
    official = {"train": (1, 162770), "validation": (162771, 182637), "test": (182638, 202599)}
    for partition, (first, last) in official.items():
        ids = data.split(index, partition)["image_id"].str.removesuffix(".jpg").astype(int)
        assert len(ids) and ids.between(first, last).all(), partition
    assert data.PARTITIONS == {0: "train", 1: "validation", 2: "test"}


def test_split_and_limit(sample_dir):
    index = data.load_index(sample_dir)
    test = data.split(index, "test", limit=7)
    assert len(test) == 7 and (test["partition"] == "test").all()
    with pytest.raises(CelebADataError, match="unknown partition"):
        data.split(index, "dev")


def _corrupt(folder: Path) -> Path:
    victim = sorted(folder.iterdir())[0]
    victim.write_bytes(b"this is not a jpeg at all")
    return victim


def test_corrupt_image_is_skipped_when_checked(sample_copy, caplog):
    victim = _corrupt(sample_copy / "img_align_celeba")
    with caplog.at_level(logging.WARNING):
        index = data.load_index(sample_copy, check_images=True)
    assert victim.name not in set(index["image_id"]) and len(index) == 19
    assert f"skipping {victim}" in caplog.text and "1 unreadable images skipped" in caplog.text


def test_corrupt_image_error_names_the_file_in_the_pipeline(sample_copy):
    victim = _corrupt(sample_copy / "img_align_celeba")
    rows = data.load_index(sample_copy, check_images=False)
    ds = data.make_dataset(rows, ["Male"], 32, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match=str(victim.name)):
        for _ in ds:
            pass


@pytest.mark.parametrize("mode,fmt", [("L", "JPEG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("P", "GIF"), ("RGB", "BMP")])
def test_any_common_image_becomes_rgb(tmp_path, mode, fmt):
    path = tmp_path / f"face.{fmt.lower()}"
    Image.new(mode, (178, 218), color=120 if mode in "LP" else (200, 100, 50, 255)[: len(mode)]).save(path, fmt)
    image = data.load_image(str(path), 64).numpy()
    assert image.shape == (64, 64, 3) and image.dtype == np.float32
    assert 0 <= image.min() and image.max() <= 255


def test_huge_image_is_resized(tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (6000, 4000), (10, 20, 30)).save(path, quality=50)
    image = data.load_image(str(path), 96).numpy()
    assert image.shape == (96, 96, 3)
    np.testing.assert_allclose(image[48, 48], [10, 20, 30], atol=3)


def test_preprocess_crops_the_centre_square():
    image = np.zeros((218, 178, 3), np.uint8)
    image[:20] = image[-20:] = (255, 0, 0)  # red bands outside the central 178x178 square
    image[20:-20] = (0, 0, 255)
    out = data.preprocess_image(image, 64).numpy()
    assert out.shape == (64, 64, 3)
    assert out[..., 0].max() < 1 and out[..., 2].min() > 254


def test_dataset_keeps_order_and_only_shuffles_training(sample_dir):
    rows = data.split(data.load_index(sample_dir), "validation", limit=10)
    ds = data.make_dataset(rows, ["Male", "Young"], 48, 4)
    images, labels = map(np.concatenate, zip(*[(x.numpy(), y.numpy()) for x, y in ds]))
    assert images.shape == (10, 48, 48, 3)
    np.testing.assert_array_equal(labels, data.labels_array(rows, ["Male", "Young"]))
    np.testing.assert_allclose(images[3], data.load_image(rows["path"][3], 48).numpy())

    train = data.make_dataset(rows, ["Male"], 48, 10, training=True, seed=1)
    x1, _ = next(iter(train))
    x2, _ = next(iter(train))
    assert x1.shape == (10, 48, 48, 3) and not np.allclose(x1.numpy(), x2.numpy())  # reshuffled each pass
    # The pipeline only decodes: every training image is one of the plain images, unaugmented.
    plain = {image.tobytes() for image in images[:, :, :, :]}
    assert {image.tobytes() for image in x1.numpy()} <= plain


def test_balanced_sampling_draws_every_cohort_equally(sample_dir):
    rows = data.split(data.load_index(sample_dir), "train")
    labels = ["Male", "Young"]
    natural = np.bincount(data.cohort_keys(data.labels_array(rows, labels)), minlength=4) / len(rows)
    assert natural.min() < 0.2  # the sample is imbalanced (not-young women are rare), so the test means something
    ds = data.make_dataset(rows, labels, 16, 50, training=True, sampling="balanced", seed=3)
    epochs = [np.concatenate([y.numpy() for _, y in ds]) for _ in range(4)]
    assert [len(e) for e in epochs] == [len(rows)] * 4  # an epoch keeps the partition's size
    assert not np.array_equal(epochs[0], epochs[1])  # new draws every epoch
    shares = np.bincount(data.cohort_keys(np.concatenate(epochs)), minlength=4) / (4 * len(rows))
    np.testing.assert_allclose(shares, 0.25, atol=0.055)  # 800 draws: 3.6 standard errors


def test_unknown_sampling_is_refused(sample_dir):
    rows = data.split(data.load_index(sample_dir), "train", 4)
    with pytest.raises(ValueError, match="unknown sampling"):
        data.make_dataset(rows, ["Male"], 16, 2, training=True, sampling="stratified")


def test_augmenter_jitters_framing_but_keeps_shape():
    images = np.random.default_rng(0).uniform(0, 255, (4, 48, 48, 3)).astype(np.float32)
    augmenter = data.make_augmenter(seed=1)
    out = augmenter(images, training=True).numpy()
    assert out.shape == images.shape and not np.allclose(out, images)
    np.testing.assert_allclose(augmenter(images, training=False).numpy(), images)  # inactive at inference
    names = {layer.__class__.__name__ for layer in augmenter.layers}
    assert {"RandomTranslation", "RandomZoom", "RandomFlip"} <= names


def test_augmentation_strength_scales_every_range():
    def span(value) -> float:  # a Keras factor is a number or a (low, high) pair
        return max(abs(v) for v in value) if isinstance(value, list | tuple) else abs(value)

    def ranges(strength: float) -> dict[str, float]:
        augmenter = data.make_augmenter(strength=strength)
        layers = {layer.__class__.__name__: layer.get_config() for layer in augmenter.layers}
        return {
            "rotation": span(layers["RandomRotation"]["factor"]),
            "shift": span(layers["RandomTranslation"]["height_factor"]),
            "zoom": span(layers["RandomZoom"]["height_factor"]),
            "brightness": span(layers["RandomBrightness"]["factor"]),
            "contrast": span(layers["RandomContrast"]["factor"]),
        }

    default, double, half = ranges(1.0), ranges(2.0), ranges(0.5)
    for name, value in default.items():
        assert double[name] == pytest.approx(2 * value) and half[name] == pytest.approx(value / 2), name


def test_cached_dataset_yields_the_same_images(sample_dir):
    rows = data.split(data.load_index(sample_dir), "test", limit=6)
    plain = np.concatenate([x for x, _ in data.make_dataset(rows, ["Male"], 32, 4)])
    cached = data.make_dataset(rows, ["Male"], 32, 4, cache=True)
    for _ in range(2):  # the second pass is served from the cache
        np.testing.assert_allclose(np.concatenate([x for x, _ in cached]), plain)
