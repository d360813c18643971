"""`python -m benchmarks.robustness`: how much accuracy does a model lose when the face is framed differently?

Real photos are rarely framed exactly like CelebA's aligned crops: a detector's box sits a little higher or lower,
tighter or wider. Each aligned test image is re-cropped with its window shifted (vertically or horizontally, up to
12% of the side) or scaled (0.8-1.2; 1.2 = the face 20% larger), the border replicated where the window leaves
the image; the crop then goes through the same resize as every other input. Writes a JSON and a figure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from celeba.config import DEFAULT_MODEL, opt
from celeba.data import SAMPLE_DIR

SHIFTS = (-0.12, -0.08, -0.04, 0.0, 0.04, 0.08, 0.12)
SCALES = (0.8, 0.9, 1.0, 1.1, 1.2)


@dataclass
class RobustnessConfig:
    """Accuracy of each model on aligned test images re-framed by shifts and scales."""

    model: tuple[Path, ...] = opt((DEFAULT_MODEL,), "one or more saved models")
    data_dir: Path = opt(SAMPLE_DIR, "a CelebA folder")
    partition: str = opt("test", "which official partition")
    limit: int = opt(500, "the first N images of the partition")
    out: Path = opt(Path("benchmarks/results/robustness.json"), "the JSON; the figure goes beside it (.png)")


def conditions() -> list[tuple[str, float, float, float]]:
    """(kind, dx, dy, scale): the vertical and horizontal shift sweeps and the scale sweep, sharing the identity."""
    rows = [("vertical", 0.0, s, 1.0) for s in SHIFTS] + [("horizontal", s, 0.0, 1.0) for s in SHIFTS if s]
    return rows + [("scale", 0.0, 0.0, s) for s in SCALES if s != 1.0]


def reframe(image: np.ndarray, dx: float, dy: float, scale: float) -> np.ndarray:
    """The square window CelebA's pipeline would crop (centre square), moved by (dx, dy) x side and divided by scale.

    dy > 0 moves the window down, so the face sits higher in the frame; scale > 1 makes the face larger.
    """
    import cv2

    h, w = image.shape[:2]
    side = min(h, w)
    crop = int(round(side / scale))
    cx, cy = w / 2 + dx * side, h / 2 + dy * side
    left, top = int(round(cx - crop / 2)), int(round(cy - crop / 2))
    pad = max(0, -left, -top, left + crop - w, top + crop - h)
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else image
    return padded[top + pad : top + pad + crop, left + pad : left + pad + crop]


def accuracy_table(model_path: Path, rows, images: list[np.ndarray]) -> list[dict[str, Any]]:
    from celeba.data import labels_array, preprocess_image
    from celeba.model import load_model, model_image_size

    model, labels = load_model(model_path)
    size = model_image_size(model)
    y = labels_array(rows, labels)
    results = []
    for kind, dx, dy, scale in conditions():
        batch = np.stack([preprocess_image(reframe(image, dx, dy, scale), size).numpy() for image in images])
        correct = (model.predict(batch, batch_size=64, verbose=0) >= 0.5) == (y >= 0.5)
        results.append(
            {
                "model": model_path.stem,
                "kind": kind,
                "dx": dx,
                "dy": dy,
                "scale": scale,
                **{label: round(float(correct[:, j].mean()), 4) for j, label in enumerate(labels)},
            }
        )
    return results


def run(cfg: RobustnessConfig) -> dict[str, Any]:
    from PIL import Image

    from celeba.data import load_index, split

    rows = split(load_index(cfg.data_dir), cfg.partition, cfg.limit)
    images = [np.asarray(Image.open(path).convert("RGB")) for path in rows["path"]]
    table = [row for path in cfg.model for row in accuracy_table(Path(path), rows, images)]
    result = {
        "config": {
            "models": [str(m) for m in cfg.model],
            "data_dir": str(cfg.data_dir),
            "partition": cfg.partition,
            "images": len(rows),
        },
        "accuracy": table,
        "largest_drop": largest_drops(table),
    }
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(result, indent=2))
    plot(table, cfg.out.with_suffix(".png"), len(rows))
    return result


def largest_drops(table: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per model and label: aligned accuracy minus the worst accuracy over every re-framing (points)."""
    drops: dict[str, dict[str, float]] = {}
    for model in dict.fromkeys(row["model"] for row in table):
        rows = [r for r in table if r["model"] == model]
        base = next(r for r in rows if r["dx"] == r["dy"] == 0 and r["scale"] == 1)
        labels = [k for k in base if k not in ("model", "kind", "dx", "dy", "scale")]
        drops[model] = {label: round(100 * (base[label] - min(r[label] for r in rows)), 1) for label in labels}
    return drops


def plot(table: list[dict[str, Any]], path: Path, n: int) -> None:
    from celeba.plots import plt, save

    labels = [k for k in table[0] if k not in ("model", "kind", "dx", "dy", "scale")]
    kinds = ("vertical", "horizontal", "scale")
    fig, axes = plt.subplots(
        len(labels), 3, figsize=(13, 3.4 * len(labels)), squeeze=False, sharey="row", layout="constrained"
    )
    for i, label in enumerate(labels):
        for k, kind in enumerate(kinds):
            ax = axes[i][k]
            for model in dict.fromkeys(row["model"] for row in table):
                rows = [
                    r
                    for r in table
                    if r["model"] == model and (r["kind"] == kind or (r["dx"] == r["dy"] == 0 and r["scale"] == 1))
                ]
                xs = [
                    100 * (r["dy"] if kind == "vertical" else r["dx"]) if kind != "scale" else r["scale"] for r in rows
                ]
                order = np.argsort(xs)
                ax.plot(np.array(xs)[order], 100 * np.array([r[label] for r in rows])[order], marker="o", label=model)
            ax.set_title(f"{label}: {kind} {'shift (% of side)' if kind != 'scale' else '(face size x)'}")
            ax.grid(alpha=0.3)
            if k == 0:
                ax.set_ylabel("accuracy (%)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Accuracy under re-framing ({n} test images)")
    save(fig, path)


def main(argv: list[str] | None = None) -> None:
    from celeba.flags import parse_config

    cfg = parse_config(RobustnessConfig, argv, RobustnessConfig.__doc__)
    result = run(cfg)
    for model, drops in result["largest_drop"].items():
        print(f"{model}: largest drop over the sweep (pts): " + ", ".join(f"{k} {v}" for k, v in drops.items()))
    print(f"wrote {cfg.out} and {cfg.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
