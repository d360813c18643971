"""The cost of flip test-time augmentation: images/s of a model with and without `--tta`, in one process.

    python -m benchmarks.tta [--model PATH] [--images 512] [--repeats 3]

Random [0, 255] images at the model's input size go through `model.predict` in batches of 64, plain and through
`celeba.model.flip_averaged`, alternately `--repeats` times (so both see the same load); prints and writes JSON
(default benchmarks/results/tta.json) with the best images/s of each and their ratio. The accuracy side is
measured by `celeba evaluate --tta` (docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from celeba.config import DEFAULT_MODEL

REPO = Path(__file__).resolve().parent.parent


def images_per_s(model, images: np.ndarray) -> float:
    start = time.perf_counter()
    model.predict(images, batch_size=64, verbose=0)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tta.json")
    args = parser.parse_args()
    from celeba.runtime import quiet_tensorflow

    quiet_tensorflow()
    from celeba.model import flip_averaged, load_model, model_image_size

    model, _ = load_model(args.model)
    both = flip_averaged(model)
    size = model_image_size(model)
    images = np.random.default_rng(0).uniform(0, 255, (args.images, size, size, 3)).astype(np.float32)
    images_per_s(model, images[:64]), images_per_s(both, images[:64])  # trace both before timing
    plain, tta = [], []
    for _ in range(args.repeats):
        plain.append(images_per_s(model, images))
        tta.append(images_per_s(both, images))
    result = {
        "model": str(args.model),
        "image_size": size,
        "images": args.images,
        "plain_images_per_s": max(plain),
        "tta_images_per_s": max(tta),
        "cost_ratio": max(plain) / max(tta),
        "load_average": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
