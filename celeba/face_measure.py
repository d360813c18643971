"""Measuring the face constants of `celeba.faces` on CelebA's aligned images, and face statistics of a photo folder.

`python -m celeba.face_measure [CELEBA_DIR] [--landmarks] [--partition P] [--limit N]` re-measures
CELEBA_FRAMING (or CELEBA_LANDMARKS); `--photos DIR` counts partial and several faces in a folder of photos.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from celeba.face_warnings import CELEBA_MAX_YAW, roll_and_yaw
from celeba.faces import (
    CELEBA_FRAMING,
    CELEBA_LANDMARKS,
    LANDMARK_NAMES,
    Framing,
    detect_faces,
    detect_landmarks,
    find_faces,
)


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
        ratios.append(
            (width / b.w, height / b.w, (width / 2 - b.x - b.w / 2) / b.w, (height / 2 - b.y - b.h / 2) / b.w)
        )
    if not ratios:
        raise ValueError("no face found in any image: cannot measure the framing")
    return Framing(*(round(float(v), 3) for v in np.median(ratios, axis=0))), len(ratios), seen


def measure_landmarks(images: Iterable[np.ndarray]) -> tuple[np.ndarray, float, int, int]:
    """(mean 4x2 landmarks, 99th percentile of |yaw|, faces found, images seen) on CelebA aligned images.

    On an aligned image the landmarks already sit where CelebA's alignment put them, so their mean over many
    images is the target of `alignment_matrix` (what `list_landmarks_align_celeba.txt` would give).
    """
    points, yaws, seen = [], [], 0
    for rgb in images:
        seen += 1
        found = detect_landmarks(rgb)
        if found:
            landmarks = found[0].landmarks
            assert landmarks is not None  # BlazeFace detections always carry them
            points.append(landmarks)
            yaws.append(abs(roll_and_yaw(landmarks)[1]))
    if not points:
        raise ValueError("no face found in any image: cannot measure the landmarks")
    return np.mean(points, axis=0).round(1), round(float(np.percentile(yaws, 99)), 2), len(points), seen


def measure_photos(images: Iterable[np.ndarray]) -> dict[str, int]:
    """Counts over photos run through `find_faces`: photos, with a face, with a `partial_face`, with more than
    one face, with a `tight_crop` warning (the numbers in docs/faces.md, "Tight crops")."""
    counts = dict.fromkeys(("photos", "face", "partial_face", "several_faces", "tight_crop"), 0)
    for rgb in images:
        faces = find_faces(rgb)
        counts["photos"] += 1
        counts["face"] += bool(faces)
        counts["partial_face"] += any(f.partial_face for f in faces)
        counts["several_faces"] += len(faces) > 1
        counts["tight_crop"] += any(w.startswith("tight_crop") for f in faces for w in f.warnings)
    return counts


def main(argv: list[str] | None = None) -> None:
    """`python -m celeba.face_measure [CELEBA_DIR] [--landmarks] [--partition P] [--limit N]`: re-measure the constants;
    `python -m celeba.face_measure --photos DIR [--limit N]`: how often faces in those photos are partial or several."""
    import argparse

    from PIL import Image

    from celeba.data import SAMPLE_DIR, load_index, split
    from celeba.runtime import quiet_tensorflow

    quiet_tensorflow()  # the detector's TFLite runtime imports TensorFlow: without its start-up lines

    parser = argparse.ArgumentParser(description="Re-measure CELEBA_FRAMING (default) or CELEBA_LANDMARKS.")
    parser.add_argument("data_dir", nargs="?", default=str(SAMPLE_DIR), help="a CelebA folder (official layout)")
    parser.add_argument("--landmarks", action="store_true", help="measure the mean BlazeFace landmarks instead")
    parser.add_argument("--partition", default=None, help="train / validation / test (default: all images)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--photos", default=None, help="a folder of photos: count partial and several faces")
    args = parser.parse_args(argv)
    if args.photos:
        from pathlib import Path

        paths = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        counts = measure_photos(np.asarray(Image.open(p).convert("RGB")) for p in paths[: args.limit])
        n = max(counts["photos"], 1)
        print(", ".join(f"{k} {v} ({v / n:.2%})" if k != "photos" else f"photos {v}" for k, v in counts.items()))
        return
    index = load_index(args.data_dir)
    rows = split(index, args.partition, args.limit) if args.partition else index.head(args.limit)
    images = (np.asarray(Image.open(p).convert("RGB")) for p in rows["path"])
    if args.landmarks:
        mean, max_yaw, found, seen = measure_landmarks(images)
        print(f"CELEBA_LANDMARKS = {mean.tolist()}  # {', '.join(LANDMARK_NAMES)}")
        print(
            f"CELEBA_MAX_YAW = {max_yaw}  (face found in {found} of {seen} images; in use: "
            f"{CELEBA_LANDMARKS.tolist()}, {CELEBA_MAX_YAW})"
        )
    else:
        framing, found, seen = measure_framing(images)
        print(f"{framing} (face found in {found} of {seen} images; in use: {CELEBA_FRAMING})")


if __name__ == "__main__":
    main()
