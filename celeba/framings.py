"""Hard framings of aligned CelebA images, with the labels still known: the face-path benchmark and its tests.

Each framing puts an aligned 178x218 image on a larger or smaller canvas (or degrades it), so the photo's true
labels are the aligned image's labels. Face size is measured in units of the Haar face box on aligned images
(`FACE_WIDTH`, 102 px; see `celeba.faces.CELEBA_FRAMING`), the face centre is that box's centre.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from celeba.faces import CELEBA_FRAMING, CELEBA_SIZE

FACE_WIDTH = CELEBA_SIZE[0] / CELEBA_FRAMING.width  # px in an aligned image
FACE_CENTRE = (CELEBA_SIZE[0] / 2 - CELEBA_FRAMING.dx * FACE_WIDTH, CELEBA_SIZE[1] / 2 - CELEBA_FRAMING.dy * FACE_WIDTH)


def _background(rgb: np.ndarray) -> tuple[int, ...]:
    """The median colour of the image's border: a plain canvas that continues the aligned image's background."""
    edge = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return tuple(int(v) for v in np.median(edge, axis=0))


def _warp(rgb: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.warpAffine(
        rgb,
        matrix,
        size,
        flags=cv2.INTER_AREA if matrix[0, 0] < 1 else cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REPLICATE,
    )


def tight(rgb: np.ndarray, fill: float = 0.9, side: int = 224) -> np.ndarray:
    """A square crop in which the face fills `fill` of the width (ID photo / face-dataset style), `side` px."""
    crop = FACE_WIDTH / fill
    scale = side / crop
    cx, cy = FACE_CENTRE
    matrix = np.array([[scale, 0, -scale * (cx - crop / 2)], [0, scale, -scale * (cy - crop / 2)]])
    return _warp(rgb, matrix, (side, side))


def on_canvas(
    rgb: np.ndarray, face_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[float, float]]:
    """(4:3 photo in which the face is `face_fraction` of the width, face centre): the aligned image pasted at a
    random place on a plain canvas of its background colour."""
    h, w = rgb.shape[:2]
    width = max(int(round(FACE_WIDTH / face_fraction)), w)
    height = max(int(round(width * 0.75)), h)
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = _background(rgb)
    y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    canvas[y : y + h, x : x + w] = rgb
    return canvas, (x + FACE_CENTRE[0], y + FACE_CENTRE[1])


def rotated(rgb: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """The face rotated by `degrees` (counter-clockwise, as cv2) about its centre, on a photo 3x the face width."""
    import cv2

    photo, centre = on_canvas(rgb, 1 / 3, rng)
    matrix = cv2.getRotationMatrix2D(centre, degrees, 1.0)
    return cv2.warpAffine(
        photo, matrix, (photo.shape[1], photo.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def scaled(rgb: np.ndarray, factor: float) -> np.ndarray:
    import cv2

    return cv2.resize(rgb, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    import cv2

    ok, data = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    assert decoded is not None  # a JPEG OpenCV has just written decodes
    return decoded[..., ::-1]


def _wide(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return on_canvas(rgb, rng.uniform(0.1, 0.2), rng)[0]


def framings(seed: int = 0) -> dict[str, Callable[[np.ndarray, int], np.ndarray]]:
    """name -> (aligned image, image number) -> photo. Random choices depend on (seed, image number) only."""
    rng = lambda i: np.random.default_rng((seed, i))  # noqa: E731
    photo = lambda rgb, i: on_canvas(rgb, 1 / 3, rng(i))[0]  # noqa: E731  the face is a third of the width
    return {
        "aligned": lambda rgb, i: rgb,
        "photo": photo,
        "tight": lambda rgb, i: tight(rgb, rng(i).uniform(0.8, 1.0)),
        "wide": lambda rgb, i: _wide(rgb, rng(i)),
        "rotated": lambda rgb, i: rotated(rgb, 30.0 if i % 2 == 0 else -30.0, rng(i)),
        "mirrored": lambda rgb, i: np.ascontiguousarray(photo(rgb, i)[:, ::-1]),
        "dark": lambda rgb, i: (photo(rgb, i) * 0.25).astype(np.uint8),
        "low_res": lambda rgb, i: scaled(photo(rgb, i), 48 / FACE_WIDTH),
        "jpeg20": lambda rgb, i: jpeg(photo(rgb, i), 20),
    }
