"""Why a face is outside what the model saw in training: the thresholds (measured on CelebA) and `face_warnings`.

Apart from `celeba.faces` (detection, alignment, crops), which imports this module; so do `predict` and `serve`
through the warnings each FaceCrop carries.
"""

from __future__ import annotations

import numpy as np

# 99th percentile of |yaw| (nose offset from the eyes' midpoint / eye distance) on those same images.
CELEBA_MAX_YAW = 0.65

# Where a face leaves what the model saw in training (see face_warnings and docs/faces.md).
# tight_crop: more than this fraction of the model's view (hair, chin, background) lies outside the photo and was
# filled by reflection. On aligned CelebA images themselves (BlazeFace landmarks jitter) the median is 4% and the
# 99th percentile 24%; on tight crops (the face fills 90% of the width) >= 43%.
TIGHT_OUTSIDE = 0.25
MIN_EYE_DISTANCE = 20.0  # photo pixels; CelebA's aligned eyes are 39 px apart, the model's 96 px input sees 21
MAX_ROLL = 25.0  # degrees of eye-line tilt in the photo; alignment levels it, but CelebA's sources were upright
MIN_BRIGHTNESS = 40.0  # mean grey level of the model's view; 99% of 3,000 CelebA images are brighter than 43
CELEBA_BRIGHTNESS = 110.0  # their median: a darker crop is brightened to it (and still warned about)
MIN_SCORE = 0.75  # detector score below this: possibly not a face, or an unusual one


def roll_and_yaw(landmarks: np.ndarray) -> tuple[float, float, float]:
    """(eye-line angle in degrees, yaw proxy, eye distance): yaw is the nose offset from the eyes' midpoint along
    the eye line in eye distances (0 frontal), like `celeba.data.pose_proxies`."""
    left, right, nose = (np.asarray(landmarks[i], np.float64) for i in range(3))
    eye = right - left
    distance = float(np.hypot(*eye))
    if distance == 0:
        return 0.0, 0.0, 0.0
    yaw = float(np.dot(nose - (left + right) / 2, eye) / distance**2)
    return float(np.degrees(np.arctan2(eye[1], eye[0]))), yaw, distance


def brightness(crop: np.ndarray) -> float:
    """Mean grey level (0-255) of the model's view of a 178x218 crop (its centre square)."""
    top = (crop.shape[0] - crop.shape[1]) // 2
    return float((np.asarray(crop[top : top + crop.shape[1], :, :3], np.float32) @ [0.299, 0.587, 0.114]).mean())


def face_warnings(
    score: float | None,
    landmarks: np.ndarray | None,
    partial: bool,
    light: float | None = None,
    reflected: float = 0.0,
) -> tuple[str, ...]:
    """Why a face is outside what CelebA's training images look like (empty: nothing known to be wrong).

    `partial`: the face itself runs past the photo edge; `reflected`: the fraction of the model's view that lies
    outside the photo (filled by reflection)."""
    out = []
    if landmarks is None:
        out.append("no_landmarks: framed from a Haar box, not aligned")
    else:
        roll, yaw, distance = roll_and_yaw(landmarks)
        if distance < MIN_EYE_DISTANCE:
            out.append(f"small_face: eyes {distance:.0f} px apart (< {MIN_EYE_DISTANCE:g})")
        if abs(roll) > MAX_ROLL:
            out.append(f"rotated: {roll:+.0f} degrees (|roll| > {MAX_ROLL:g})")
        if abs(yaw) > CELEBA_MAX_YAW:
            out.append(f"turned: yaw {yaw:+.2f} (|yaw| > {CELEBA_MAX_YAW:g})")
    if light is not None and light < MIN_BRIGHTNESS:
        out.append(f"dark: mean brightness {light:.0f} (< {MIN_BRIGHTNESS:g}); brightened to {CELEBA_BRIGHTNESS:g}")
    if score is not None and score < MIN_SCORE:
        out.append(f"low_score: detector score {score:.2f} (< {MIN_SCORE:g})")
    if partial:
        out.append("partial_face: the CelebA window runs past the photo edge; the border was reflected")
    elif reflected > TIGHT_OUTSIDE:
        out.append(
            f"tight_crop: {reflected:.0%} of the model's view (hair, chin, background) lies outside the photo "
            f"(> {TIGHT_OUTSIDE:.0%}); filled by reflection"
        )
    return tuple(out)
