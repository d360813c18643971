"""`python -m benchmarks.face_detectors --data-dir ../shared/data/celeba --limit 60`: which detector finds faces?

The measurement behind the choice of BlazeFace (docs/faces.md): found rate and time per image of the Haar cascade,
MTCNN and BlazeFace on framings of aligned test images, each detector on a 25% reflected border (and, for tight
crops, also without). MTCNN is not a dependency of the project: `pip install mtcnn` to run this. Here "found"
means any detection at all (also in the border), with MTCNN's score >= 0.9 and BlazeFace's >= 0.5.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    import argparse

    from celeba.data import load_index, split
    from celeba.faces import _blazeface, _pad, detect_faces
    from celeba.framings import framings
    from celeba.predict import read_photo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=60)
    args = parser.parse_args(argv)
    from mtcnn import MTCNN  # not a project dependency

    mtcnn = MTCNN()
    detectors = {
        "haar": lambda im: bool(detect_faces(im)),
        "mtcnn": lambda im: any(f["confidence"] >= 0.9 for f in mtcnn.detect_faces(im)),
        "blazeface": lambda im: bool(_blazeface()(im)),
    }
    images = [read_photo(p) for p in split(load_index(args.data_dir), "test", args.limit)["path"]]
    make = framings()
    for name in ("aligned", "tight", "wide", "rotated"):
        photos = [make[name](rgb, i) for i, rgb in enumerate(images)]
        for pad in (0.0, 0.25) if name == "tight" else (0.25,):
            for detector, found_in in detectors.items():
                start = time.perf_counter()
                found = [found_in(_pad(photo, pad)[0]) for photo in photos]
                ms = 1000 * (time.perf_counter() - start) / len(photos)
                print(f"{name:8s} pad={pad:.2f} {detector:10s} found={np.mean(found):.3f} {ms:.0f} ms/img", flush=True)


if __name__ == "__main__":
    sys.exit(main())
