"""`python -m benchmarks.framing`: does detect-and-crop give the model the framing it was trained on?

Each aligned test image is pasted, enlarged 1.5x, into a larger grey photo; `predict` must find the face and
re-crop it. Accuracy against the CelebA labels is compared with scoring the aligned image directly
(`--no-detect`), on the same images. Writes benchmarks/results/framing.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from celeba.config import DEFAULT_MODEL, opt
from celeba.data import SAMPLE_DIR


@dataclass
class FramingConfig:
    """Accuracy of detect-and-crop on aligned images pasted into larger photos vs the aligned images themselves."""

    model: Path = opt(DEFAULT_MODEL, "the .keras model (run card beside it)")
    data_dir: Path = opt(SAMPLE_DIR, "a CelebA folder (official or Kaggle layout)")
    partition: str = opt("test", "which official partition")
    limit: int = opt(500, "at most N images")
    out: Path = opt(Path("benchmarks/results/framing.json"), "the JSON report")


def paste(rgb: np.ndarray, scale: float = 1.5) -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    big = np.asarray(Image.fromarray(rgb).resize((int(w * scale), int(h * scale)), Image.BICUBIC))
    photo = np.full((int(h * scale * 1.8), int(w * scale * 2.2), 3), 110, np.uint8)
    top, left = int(h * scale * 0.4), int(w * scale * 0.6)
    photo[top:top + big.shape[0], left:left + big.shape[1]] = big
    return photo


def run(cfg: FramingConfig) -> dict:
    from tqdm.auto import tqdm

    from celeba.data import labels_array, load_index, split
    from celeba.predict import Predictor, read_photo

    predictor = Predictor(cfg.model)
    rows = split(load_index(cfg.data_dir), cfg.partition, cfg.limit)
    y = labels_array(rows, predictor.labels)
    aligned, detected, found = [], [], []
    for path in tqdm(rows["path"], desc="framing", unit="img"):
        rgb = read_photo(path)
        aligned.append([predictor.predict([rgb], detect=False)[0][0].probabilities[k] for k in predictor.labels])
        faces = predictor.predict([paste(rgb)])[0]
        found.append(bool(faces))
        detected.append([faces[0].probabilities[k] for k in predictor.labels] if faces else [np.nan] * len(y[0]))
    aligned, detected, found = np.array(aligned), np.array(detected), np.array(found)
    acc = lambda p, m: {k: round(float(((p[m, j] >= 0.5) == y[m, j]).mean()), 4)  # noqa: E731
                        for j, k in enumerate(predictor.labels)}
    result = {"config": {k: str(v) for k, v in asdict(cfg).items()}, "images": len(rows),
              "face_found": round(float(found.mean()), 4),
              "accuracy_aligned_no_detect": acc(aligned, np.ones(len(rows), bool)),
              "accuracy_aligned_no_detect_where_found": acc(aligned, found),
              "accuracy_detect_and_crop_where_found": acc(detected, found),
              "label_agreement_where_found":
                  round(float(((aligned[found] >= 0.5) == (detected[found] >= 0.5)).mean()), 4),
              "mean_abs_prob_diff_where_found": round(float(np.abs(aligned[found] - detected[found]).mean()), 4)}
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> None:
    from celeba.cli import run_script

    run_script(FramingConfig, run, argv)


if __name__ == "__main__":
    main()
