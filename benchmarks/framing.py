"""`python -m benchmarks.framing`: is a face found, and scored like its aligned original, on hard framings?

Each aligned test image is turned into photos with known labels (`celeba.framings`: tight crops, wide shots,
±30° rotations, mirrored, dark, low resolution, JPEG quality 20, ...). Every face path then scores the photo:
`blazeface` (BlazeFace + CelebA alignment, the default of `predict` and `serve`), `haar` (Haar cascade + the
measured framing, the fallback) and `none` (the whole photo, `--no-detect`). For each (framing, path): how often a
face is found, Male / Young accuracy against the CelebA labels, and the same accuracy of the aligned originals on
the same images. Writes benchmarks/results/framing.json (and .csv).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from celeba.config import DEFAULT_MODEL, opt
from celeba.data import SAMPLE_DIR

METHODS = ("blazeface", "haar", "none")


@dataclass
class FramingConfig:
    """Face found rate and Male/Young accuracy of each face path on hard framings of aligned CelebA test images."""

    model: Path = opt(DEFAULT_MODEL, "the .keras model (run card beside it)")
    data_dir: Path = opt(SAMPLE_DIR, "a CelebA folder (official or Kaggle layout)")
    partition: str = opt("test", "which official partition")
    limit: int = opt(500, "at most N images")
    framings: tuple[str, ...] = opt((), "framings to run (default: all of celeba.framings.framings())")
    methods: tuple[str, ...] = opt(METHODS, "face paths: blazeface (default of predict), haar, none")
    seed: int = opt(0, "seed of the random framing choices")
    out: Path = opt(Path("benchmarks/results/framing.json"), "the JSON report (and a .csv beside it)")


def run(cfg: FramingConfig) -> dict:
    import pandas as pd
    from tqdm.auto import tqdm

    from celeba.data import labels_array, load_index, split
    from celeba.faces import find_faces, whole_image
    from celeba.framings import framings
    from celeba.predict import Predictor, read_photo

    makers = framings(cfg.seed)
    names = list(cfg.framings) or list(makers)
    unknown = sorted(set(names) - set(makers)) + sorted(set(cfg.methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown framing or method {unknown}: choose from {list(makers)} and {list(METHODS)}")
    predictor = Predictor(cfg.model)
    rows = split(load_index(cfg.data_dir), cfg.partition, cfg.limit)
    y = labels_array(rows, predictor.labels).astype(bool)
    crops, records = [], []
    seconds = {(f, m): 0.0 for f in names for m in cfg.methods}
    for i, path in enumerate(tqdm(rows["path"], desc="framing", unit="img")):
        rgb = read_photo(path)
        crops.append(rgb)
        records.append(
            {
                "image": i,
                "framing": "original",
                "method": "aligned",
                "found": True,
                "partial": False,
                "warned": False,
                "crop": len(crops) - 1,
            }
        )
        for framing in names:
            photo = np.ascontiguousarray(makers[framing](rgb, i))
            for method in cfg.methods:
                start = time.perf_counter()
                faces = [whole_image(photo)] if method == "none" else find_faces(photo, 1, method)
                seconds[framing, method] += time.perf_counter() - start
                face = faces[0] if faces else None
                if face is not None:
                    crops.append(face.crop)
                records.append(
                    {
                        "image": i,
                        "framing": framing,
                        "method": method,
                        "found": face is not None,
                        "partial": bool(face and face.partial_face),
                        "warned": bool(face and face.warnings),
                        "crop": len(crops) - 1 if face is not None else -1,
                    }
                )
    probs = np.concatenate([predictor.probabilities(crops[k : k + 256]) for k in range(0, len(crops), 256)])
    frame = pd.DataFrame(records)
    for j, label in enumerate(predictor.labels):
        correct = (probs[frame["crop"], j] >= 0.5) == y[frame["image"], j]
        frame[f"correct_{label}"] = np.where(frame["found"], correct, np.nan)
    original = frame[frame["framing"] == "original"].set_index("image")
    table = []
    for (framing, method), part in frame[frame["framing"] != "original"].groupby(["framing", "method"], sort=False):
        found = part[part["found"]]
        row = {
            "framing": framing,
            "method": method,
            "images": len(part),
            "found": round(part["found"].mean(), 4),
            "partial_face": round(found["partial"].mean(), 4) if len(found) else None,
            "warned": round(found["warned"].mean(), 4) if len(found) else None,
            "ms_per_image": round(1000 * seconds[framing, method] / len(part), 1),
        }
        for label in predictor.labels:
            acc = found[f"correct_{label}"].mean()
            ref = original.loc[found["image"], f"correct_{label}"].mean()
            row[f"{label}_accuracy"] = round(float(acc), 4) if len(found) else None
            row[f"{label}_vs_aligned"] = round(float(acc - ref), 4) if len(found) else None
        table.append(row)
    result = {
        "config": {k: str(v) for k, v in asdict(cfg).items()},
        "images": len(rows),
        "aligned_accuracy": {label: round(float(original[f"correct_{label}"].mean()), 4) for label in predictor.labels},
        "rows": table,
    }
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(result, indent=2))
    pd.DataFrame(table).to_csv(cfg.out.with_suffix(".csv"), index=False)
    return result


def report(cfg: FramingConfig) -> None:
    """Run, then print the table (the runner leaves reporting to scripts)."""
    import pandas as pd

    result = run(cfg)
    print(f"{result['images']} images, aligned originals: {result['aligned_accuracy']}")
    print(pd.DataFrame(result["rows"]).to_string(index=False))


def main(argv: list[str] | None = None) -> None:
    from celeba.cli import run_script

    run_script(FramingConfig, report, argv)


if __name__ == "__main__":
    main()
