"""Labelled photo folders as a training source: the fixed split, cached face crops, rows with masked labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from celeba.config import REPO_ROOT
from celeba.data import CelebADataError
from celeba.sources import CROPS_FILE, PhotoSource, age_band, photo_rows, read_split, split_folder

PHOTOS = REPO_ROOT / "data" / "photos-sample"


def _source(crops, **overrides):
    values = {
        "folder": PHOTOS / "images",
        "labels_csv": PHOTOS / "labels.csv",
        "filename_pattern": None,
        "derive": ("Young=age<30",),
        "split_file": PHOTOS / "split.csv",
        "crops_dir": crops,
    }
    return PhotoSource(**{**values, **overrides})


def test_age_bands_keep_children_visible():
    bands = age_band(pd.Series([0, 4, 5, 12, 13, 17, 18, 29, 30, 59, 60, 116, None]))
    assert list(bands.astype(str)) == [
        "0-4", "0-4", "5-12", "5-12", "13-17", "13-17", "18-29", "18-29", "30-44", "45-59", "60+", "60+", "nan",
    ]  # fmt: skip


def test_split_is_stratified_deterministic_and_independent_of_row_order():
    rng = np.random.default_rng(1)
    table = pd.DataFrame(
        {"file": [f"{i:04d}.jpg" for i in range(1000)], "race": rng.choice(["a", "b", "c"], 1000, p=[0.6, 0.3, 0.1])}
    )
    split = split_folder(table, ["race"], seed=3)
    again = split_folder(table.sample(frac=1, random_state=0), ["race"], seed=3)
    pd.testing.assert_frame_equal(split, again)
    assert split["file"].is_unique and len(split) == 1000
    joined = split.merge(table, on="file")
    for _, part in joined.groupby("race"):  # every stratum cut 60/20/20, to the nearest photo
        shares = part["split"].value_counts(normalize=True)
        assert shares["train"] == pytest.approx(0.6, abs=0.01) and shares["evaluation"] == pytest.approx(0.2, abs=0.01)
    assert not split.equals(split_folder(table, ["race"], seed=4))


def test_committed_utkface_split_is_complete_and_disjoint():
    split = read_split(REPO_ROOT / "data" / "utkface" / "split.csv")
    assert len(split) == 8000 and split.index.is_unique
    assert split.value_counts().to_dict() == {"train": 4799, "validation": 1605, "evaluation": 1596}


@pytest.mark.parametrize(
    "text, message",
    [("name,part\na.jpg,train\n", "columns file,split"), ("file,split\na.jpg,test\n", "unknown split value")],
)
def test_bad_split_files_are_clear_errors(tmp_path, text, message):
    path = tmp_path / "split.csv"
    path.write_text(text)
    with pytest.raises(CelebADataError, match=message):
        read_split(path)


def test_photo_rows_crop_once_derive_and_mask(tmp_path):
    crops = tmp_path / "crops"
    rows = photo_rows(_source(crops), ("Male", "Young", "Smiling"), ["train"])
    labels = pd.read_csv(PHOTOS / "labels.csv").set_index("file")
    split = pd.read_csv(PHOTOS / "split.csv").set_index("file")["split"]
    assert set(rows["image_id"]) == set(split.index[split == "train"])
    truth = labels.loc[rows["image_id"]]
    np.testing.assert_array_equal(rows["Male"], truth["Male"])
    np.testing.assert_array_equal(rows["Young"], (truth["age"] < 30).astype(float))
    assert rows["Smiling"].isna().all()  # the folder does not know it: NaN, masked out of the loss
    first = {p: (crops / p).stat().st_mtime_ns for p in (crops.iterdir()) if p.suffix == ".jpg"}
    assert len(first) == len(rows) and all(Image.open(p).size == (178, 218) for p in rows["path"])
    again = photo_rows(_source(crops), ("Male", "Young"), ["train"])  # cached: nothing is detected again
    assert {p: (crops / p).stat().st_mtime_ns for p in first} == first
    assert list(again["path"]) == list(rows["path"])
    assert (crops / CROPS_FILE).is_file()


def test_a_folder_without_faces_or_labels_is_a_clear_error(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (120, 120), (128, 128, 128)).save(folder / "grey.jpg")
    (tmp_path / "labels.csv").write_text("file,Male\ngrey.jpg,1\n")
    source = _source(tmp_path / "crops", folder=folder, labels_csv=tmp_path / "labels.csv", derive=(), split_file=None)
    with pytest.raises(CelebADataError, match="no usable photo"):
        photo_rows(source, ("Male",), None)
    with pytest.raises(CelebADataError, match="none of the labels Young"):
        photo_rows(source, ("Young",), None)
