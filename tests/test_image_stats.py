"""Image statistics that slice the results: the luminance weights (ITU-R BT.601) and the file path's channel order."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from celeba.image_stats import file_statistics, image_statistics


@pytest.mark.parametrize("channel, weight", [(0, 0.299), (1, 0.587), (2, 0.114)])
def test_luminance_weighs_red_green_blue_like_bt601(channel, weight):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., channel] = 255
    stats = image_statistics(rgb)
    assert stats["mean_luminance"] == pytest.approx(weight, abs=1e-6)
    assert stats["contrast"] == pytest.approx(0.0, abs=1e-6) and stats["sharpness"] == pytest.approx(0.0, abs=1e-6)


def test_file_statistics_read_rgb_not_bgr(tmp_path):
    """OpenCV reads BGR: a pure red file must still weigh as red (0.299), not as blue (0.114)."""
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "red.png")
    stats = file_statistics(tmp_path / "red.png")
    assert stats["mean_luminance"] == pytest.approx(0.299, abs=1e-3)
    assert stats["file_kb"] == pytest.approx((tmp_path / "red.png").stat().st_size / 1024)


def test_sharpness_orders_a_blurred_image_below_the_original():
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    blurred = np.asarray(Image.fromarray(sharp).resize((8, 8)).resize((64, 64), Image.BILINEAR))
    assert image_statistics(blurred)["sharpness"] < image_statistics(sharp)["sharpness"] / 10


def test_unreadable_file_is_named(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.jpg"):
        file_statistics(bad)
