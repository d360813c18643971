"""The re-framing of benchmarks/robustness.py: identity is CelebA's centre crop; shifts and scales move the face."""

from __future__ import annotations

import numpy as np

from benchmarks.robustness import conditions, largest_drops, reframe


def _marked(h: int = 218, w: int = 178) -> np.ndarray:
    image = np.zeros((h, w, 3), np.uint8)
    image[h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2] = 255  # a white dot where the face centre is
    return image


def _dot(crop: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(crop[..., 0] > 128)
    return ys.mean() / crop.shape[0], xs.mean() / crop.shape[1]


def test_identity_is_the_centre_square():
    image = _marked()
    np.testing.assert_array_equal(reframe(image, 0, 0, 1.0), image[20:198])


def test_shift_down_puts_the_face_higher_and_scale_enlarges_it():
    image = _marked()
    y, x = _dot(reframe(image, 0, 0.1, 1.0))
    assert abs(y - (0.5 - 0.1)) < 0.02 and abs(x - 0.5) < 0.02
    y, x = _dot(reframe(image, -0.1, 0, 1.0))
    assert abs(x - 0.6) < 0.02
    assert reframe(image, 0, 0, 1.25).shape == (142, 142, 3)  # a smaller window: the face fills more of it
    wide = reframe(image, 0, 0, 0.8)
    assert wide.shape == (222, 222, 3) and np.isfinite(wide).all()  # beyond the image: border replicated


def test_sweep_covers_the_issue_range_and_drops_are_measured_from_aligned():
    kinds = {(k, dx, dy, s) for k, dx, dy, s in conditions()}
    assert max(abs(dy) for _, _, dy, _ in kinds) == 0.12 and {0.8, 1.2} <= {s for *_, s in kinds}
    table = [
        {"model": "m", "kind": "vertical", "dx": 0.0, "dy": 0.0, "scale": 1.0, "Male": 0.9},
        {"model": "m", "kind": "vertical", "dx": 0.0, "dy": 0.1, "scale": 1.0, "Male": 0.85},
        {"model": "m", "kind": "scale", "dx": 0.0, "dy": 0.0, "scale": 0.8, "Male": 0.7},
    ]
    assert largest_drops(table) == {"m": {"Male": 20.0}}
