"""Plot a learning curve from a population study: average and worst-group accuracy against train images.

    python scripts/learning_curve.py --study docs/study-curve/study.json \
        --model models/curve-tuned-1k.keras ... --out images/learning_curve_tuned.png

The accuracies are the study's (scripts/population_study.py: CelebA test and the photo folder's evaluation part,
each with its worst group); the train image counts are each model's run card (`data.train`, all sources). Prints a
markdown table of the same numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TABLES = ("celeba Male", "celeba Young", "photos Male, adults by race x gender", "photos Young (age<30), all by gender")


def curve_points(study: dict, models: list[Path]) -> list[dict]:
    """One point per model: its train image count (run card) and the study's cells for TABLES."""
    points = []
    for model in models:
        card = json.loads(model.with_suffix(".json").read_text())
        cells = study[model.stem]
        points.append(
            {
                "model": model.stem,
                "train_images": int(card["data"]["train"]),
                **{t: (cells[t]["average"], cells[t]["worst"]) for t in TABLES if t in cells},
            }
        )
    return sorted(points, key=lambda p: p["train_images"])


def markdown(points: list[dict]) -> str:
    tables = [t for t in TABLES if t in points[0]]
    lines = [
        "| train images | model | " + " | ".join(f"{t} (avg / worst)" for t in tables) + " |",
        "|" + "---|" * (len(tables) + 2),
    ]
    for p in points:
        cells = [f"{100 * p[t][0]:.1f} / {100 * p[t][1]:.1f}" for t in tables]
        lines.append(f"| {p['train_images']:,} | {p['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(points: list[dict], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    tables = [t for t in TABLES if t in points[0]]
    fig, axes = plt.subplots(1, len(tables), figsize=(4 * len(tables), 3.6), sharex=True)
    x = [p["train_images"] for p in points]
    for ax, table in zip(axes, tables):
        ax.plot(x, [100 * p[table][0] for p in points], marker="o", label="average")
        ax.plot(x, [100 * p[table][1] for p in points], marker="s", linestyle="--", label="worst group")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(x, [f"{n / 1000:.1f}k" for n in x], fontsize=8)
        ax.set_title(table, fontsize=9)
        ax.set_xlabel("train images (all sources)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, required=True, help="study.json of scripts/population_study.py")
    parser.add_argument("--model", type=Path, action="append", required=True, help="a model of the study (repeat)")
    parser.add_argument("--title", default="Learning curve")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()
    points = curve_points(json.loads(args.study.read_text()), args.model)
    plot(points, args.title, args.out)
    print(markdown(points))


if __name__ == "__main__":
    main()
