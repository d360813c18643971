"""Cheap per-image statistics used to slice results: lighting (a crude skin-tone proxy), contrast, sharpness."""

from __future__ import annotations

import os

import cv2
import numpy as np


def image_statistics(image: np.ndarray) -> dict[str, float]:
    """RGB uint8 (or [0, 255] float) image -> mean luminance and contrast in [0, 1], Laplacian-variance sharpness.

    Mean luminance mixes skin tone with lighting, so it is a proxy for either, never a measure of one.
    """
    rgb = np.asarray(image, dtype=np.float32)
    luminance = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return {
        "mean_luminance": float(luminance.mean() / 255.0),
        "contrast": float(luminance.std() / 255.0),
        "sharpness": float(cv2.Laplacian(luminance, cv2.CV_32F).var()),
    }


def file_statistics(path: str | os.PathLike) -> dict[str, float]:
    """Statistics of an image file as stored: its pixels plus its size on disk (JPEG size tracks detail)."""
    image = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: unreadable image")
    return image_statistics(image[..., ::-1]) | {"file_kb": os.path.getsize(path) / 1024.0}
