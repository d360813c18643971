"""What an input size costs at inference: images/s and model file size of the same model at 96, 128 and 160 px.

    python -m benchmarks.resolution [--sizes 96 128 160] [--images 512] [--repeats 3]

MobileNetV2 with the project's head is built at each size (random weights: speed does not depend on their values)
and saved as .keras; random [0, 255] images go through `model.predict` in batches of 64, the sizes taking turns
`--repeats` times so that all see the same load. Writes JSON (default benchmarks/results/resolution.json) with the
best images/s per size, the ratio to the smallest size, the parameter count and the saved file's size. Accuracy and
training speed per size come from the run cards (docs/results.md, "Resolution").
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.tta import images_per_s  # the same timing of model.predict in batches of 64

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 160])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "resolution.json")
    args = parser.parse_args()
    from celeba.runtime import quiet_tensorflow

    quiet_tensorflow()
    from celeba.model import build_model

    rng = np.random.default_rng(0)
    models = {size: build_model(2, size, "none") for size in args.sizes}
    images = {size: rng.uniform(0, 255, (args.images, size, size, 3)).astype(np.float32) for size in args.sizes}
    sizes_mb = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size, model in models.items():
            path = Path(tmp) / f"m{size}.keras"
            model.save(path)
            sizes_mb[size] = path.stat().st_size / 1e6
    for size, model in models.items():
        images_per_s(model, images[size][:64])  # trace before timing
    speeds: dict[int, list[float]] = {size: [] for size in args.sizes}
    for _ in range(args.repeats):
        for size, model in models.items():
            speeds[size].append(images_per_s(model, images[size]))
    smallest = min(args.sizes)
    result = {
        "images": args.images,
        "repeats": args.repeats,
        "sizes": {
            str(size): {
                "images_per_s": max(speeds[size]),
                "relative_to_smallest": max(speeds[size]) / max(speeds[smallest]),
                "parameters": int(models[size].count_params()),
                "keras_file_mb": round(sizes_mb[size], 2),
            }
            for size in args.sizes
        },
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
