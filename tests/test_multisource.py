"""Training on several sources: CelebA plus a labelled photo folder, mixed by weight, unknown labels masked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config

from celeba.config import REPO_ROOT, ConfigError, TrainConfig
from celeba.data import load_index, make_dataset, split
from celeba.flags import parse_config

PHOTOS = REPO_ROOT / "data" / "photos-sample"
PHOTO_FLAGS = {
    "photos": PHOTOS / "images",
    "photos_labels_csv": PHOTOS / "labels.csv",
    "photos_split": PHOTOS / "split.csv",
    "photos_derive": ("Young=age<30",),
}


def test_sources_are_drawn_by_their_weights(sample_dir):
    rows = split(load_index(sample_dir), "train").iloc[:40]
    rows = pd.concat([rows] * 5, ignore_index=True)  # 200 rows a source: the share is measured on 400 draws
    a = rows.assign(source="celeba")
    b = rows.assign(source="photos", Male=np.nan)  # the second source does not know Male
    mixed = pd.concat([a, b], ignore_index=True)
    for weights, share in (([0.9, 0.1], 0.1), ([0.3, 0.7], 0.7)):
        ds = make_dataset(mixed, ("Male", "Young"), 32, 100, training=True, seed=1, source_weights=weights)
        y = np.concatenate([labels.numpy() for _, labels in ds])
        assert len(y) == len(mixed)  # an epoch keeps the rows' count
        assert np.isnan(y[:, 0]).mean() == pytest.approx(share, abs=0.08)
        assert not np.isnan(y[:, 1]).any()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--photos", "x", "--photos-labels-csv", "l.csv"], "--photos-split"),
        (["--photos", "x", "--photos-split", "s.csv"], "exactly one of"),
        (["--photos-weight", "0.3"], "only with --photos"),
        (
            ["--photos", "x", "--photos-pattern", "p", "--photos-split", "s", "--photos-weight", "1.5"],
            "--photos-weight",
        ),
    ],
)
def test_bad_source_flags_are_clear(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(TrainConfig, argv)


@pytest.mark.slow  # a tiny training over two sources, with Group DRO and worst-group selection
def test_training_on_celeba_and_a_photo_folder(tmp_path):
    from celeba.train import train

    cfg = tiny_config(
        tmp_path,
        "mixed",
        image_size=32,
        limit=16,
        batch_size=8,
        loss="group-dro",
        select_by="worst_group",
        photos_weight=0.4,
        crops_dir=tmp_path / "crops",
        **PHOTO_FLAGS,
    )
    card = train(cfg)
    sources = card.data["sources"]
    assert sources["celeba"]["train"] == 16 and sources[str(PHOTOS / "images")]["train"] == 12
    assert sources[str(PHOTOS / "images")]["train_share"] == 0.4 and sources["celeba"]["train_share"] == 0.6
    assert card.validation_metrics["Male"]["n"] == 16 + 5  # CelebA validation plus the folder's validation part
    history = (tmp_path / "mixed" / "history.csv").read_text()
    assert "val_worst_group" in history.splitlines()[0]
    assert (tmp_path / "mixed.keras").is_file()
