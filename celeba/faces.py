"""Find faces in a photo and crop them the way CelebA's aligned images are framed.

The model was trained on CelebA's 178x218 "aligned" crops, so a face from any photo must reach it
framed the same way: detect the face, grow the detector's box by fixed factors, resample to
178x218, then hand the crop to `celeba.data.preprocess_image` like every training image.

The factors (`CELEBA_FRAMING`) were measured by running the detector on the embedded sample itself
(`measure_framing(sample paths)`): on an aligned image the whole 178x218 frame is the crop we want,
so the frame's size and centre expressed in units of the detected box width are the factors.
The detector is OpenCV's bundled Haar cascade (`haarcascade_frontalface_alt2`, shipped inside the
opencv-python wheel: nothing is downloaded at run time). It finds upright, roughly frontal faces.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Iterable

import numpy as np

CELEBA_SIZE = (178, 218)  # width, height of CelebA's aligned images
CASCADE = "haarcascade_frontalface_alt2.xml"
_LOCK = threading.Lock()  # OpenCV's cascade is not safe to share between threads
DETECT_MAX_SIDE = 1024  # detect on a copy at most this large: Haar cost grows with pixels, faces stay findable


@dataclass(frozen=True)
class Framing:
    """The CelebA crop in units of the detected box width, centred at box centre + (dx, dy) * width."""

    width: float
    height: float
    dx: float
    dy: float


# Medians over the 286 of 299 embedded sample images where the detector finds a face
# (`measure_framing`; tests/test_faces.py re-measures them).
CELEBA_FRAMING = Framing(width=1.745, height=2.137, dx=0.004, dy=-0.141)


@dataclass(frozen=True)
class Box:
    """A face box in pixels of the original image (x, y = top-left corner)."""

    x: int
    y: int
    w: int
    h: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@lru_cache(maxsize=None)
def _cascade():
    import cv2

    detector = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
    if detector.empty():  # a broken OpenCV install, not bad input
        raise RuntimeError(f"could not load {CASCADE} from {cv2.data.haarcascades}")
    return detector


def detect_faces(rgb: np.ndarray, min_face: float = 0.08, min_neighbors: int = 5) -> list[Box]:
    """Face boxes, largest first. `min_face`: smallest face side as a fraction of the image's shorter side."""
    import cv2

    gray = cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2GRAY)
    scale = min(1.0, DETECT_MAX_SIDE / max(gray.shape))
    if scale < 1.0:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    side = max(24, int(min_face * min(gray.shape)))
    with _LOCK:
        found = _cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=min_neighbors, minSize=(side, side))
    boxes = [Box(*(int(round(v / scale)) for v in box)) for box in np.reshape(found, (-1, 4))]
    return sorted(boxes, key=lambda b: b.w * b.h, reverse=True)


def crop_rect(box: Box, framing: Framing = CELEBA_FRAMING) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the CelebA-style crop around `box`, in photo pixels (may leave the photo)."""
    cx = box.x + box.w / 2 + framing.dx * box.w
    cy = box.y + box.h / 2 + framing.dy * box.w
    half_w, half_h = framing.width * box.w / 2, framing.height * box.w / 2
    return cx - half_w, cy - half_h, cx + half_w, cy + half_h


def crop_face(rgb: np.ndarray, box: Box, framing: Framing = CELEBA_FRAMING) -> np.ndarray:
    """A 178x218 uint8 crop framed like CelebA's aligned images; borders outside the photo are mirrored."""
    import cv2

    out_w, out_h = CELEBA_SIZE
    x0, y0, x1, y1 = crop_rect(box, framing)
    sx, sy = out_w / (x1 - x0), out_h / (y1 - y0)
    # Affine map from photo to crop: one resample handles scaling, offset and borders.
    matrix = np.array([[sx, 0, -sx * x0], [0, sy, -sy * y0]], dtype=np.float64)
    shrink = min(sx, sy) < 1
    return cv2.warpAffine(np.ascontiguousarray(rgb[..., :3]), matrix, (out_w, out_h),
                          flags=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def faces_in(rgb: np.ndarray, max_faces: int = 10, framing: Framing = CELEBA_FRAMING) -> list[tuple[Box, np.ndarray]]:
    """(box, CelebA-style crop) for each face found, largest first."""
    return [(box, crop_face(rgb, box, framing)) for box in detect_faces(rgb)[:max_faces]]


def measure_framing(images: Iterable[np.ndarray]) -> tuple[Framing, int, int]:
    """Framing factors measured on CelebA aligned images: (median factors, faces found, images seen).

    On an aligned image the whole frame is the target crop, so its size and centre offset relative to the
    largest detected box are exactly the factors `crop_face` needs.
    """
    ratios, seen = [], 0
    for rgb in images:
        seen += 1
        boxes = detect_faces(rgb)
        if not boxes:
            continue
        b = boxes[0]
        height, width = rgb.shape[:2]
        ratios.append((width / b.w, height / b.w, (width / 2 - b.x - b.w / 2) / b.w,
                       (height / 2 - b.y - b.h / 2) / b.w))
    if not ratios:
        raise ValueError("no face found in any image: cannot measure the framing")
    return Framing(*(round(float(v), 3) for v in np.median(ratios, axis=0))), len(ratios), seen



if __name__ == "__main__":  # `python -m celeba.faces [CELEBA_DIR]`: re-measure CELEBA_FRAMING
    import sys

    from PIL import Image

    from celeba.data import SAMPLE_DIR, image_dir

    paths = sorted(image_dir(sys.argv[1] if len(sys.argv) > 1 else SAMPLE_DIR).glob("*.jpg"))
    framing, found, seen = measure_framing(np.asarray(Image.open(p).convert("RGB")) for p in paths)
    print(f"{framing} (face found in {found} of {seen} images; in use: {CELEBA_FRAMING})")
