"""The README's side-by-side study: bias mitigations and the learning curve, on one CelebA folder.

    python scripts/study.py --data-dir ../shared/data/celeba

Each model's probabilities on the validation and test partitions are computed once and kept as CSV under
`--cache` (delete it after retraining). The cohort-balancing threshold is chosen on validation and applied to
test, as a post-processing row. Writes `--out`/study.json and study.md, and the figures into `--images`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a plain script from a checkout

from celeba.config import opt  # noqa: E402
from celeba.data import SAMPLE_DIR  # noqa: E402
from celeba.runcard import RunCard  # noqa: E402

MITIGATIONS = {  # run-card name -> what it is, in table order
    "celeba16k-bce": "plain BCE",
    "celeba16k-weighted-bce": "weighted BCE",
    "celeba16k-balanced": "cohort-balanced sampling",
    "celeba16k-focal": "focal loss (gamma 2)",
    "celeba8k-bce": "from scratch, 4k images (old baseline)",
}
CURVE = {1000: "curve-1k-bce", 4000: "curve-4k-bce", 8000: "curve-8k-bce", 15979: "celeba16k-bce"}


@dataclass
class StudyConfig:
    """Mitigations side by side and the learning curve, from the models under --models-dir."""

    data_dir: Path = opt(SAMPLE_DIR, "a CelebA folder with validation and test images")
    models_dir: Path = opt(Path("models"), "where the trained models and their run cards are")
    cache: Path = opt(Path("reports/study"), "per-model probabilities (CSV), computed once")
    out: Path = opt(Path("benchmarks/results"), "study.json and study.md")
    images: Path = opt(Path("images"), "the figures")
    labels: tuple[str, ...] = opt(("Male", "Young"), "the labels every model predicts")


def probabilities(model_path: Path, rows: pd.DataFrame, labels: tuple[str, ...], cache: Path) -> np.ndarray:
    """The model's probabilities for `rows`, from the cache when it is newer than the model."""
    if cache.is_file() and cache.stat().st_mtime > model_path.stat().st_mtime:
        frame = pd.read_csv(cache, dtype={"image_id": str}).set_index("image_id")
        if list(frame.index) == list(rows["image_id"]):
            return frame[list(labels)].to_numpy()
    from celeba.model import dataset_probabilities, load_model, model_image_size

    model, model_labels = load_model(model_path)
    assert model_labels == labels, f"{model_path}: labels {model_labels}, expected {labels}"
    probs = dataset_probabilities(model, rows, labels, model_image_size(model))
    cache.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(probs, columns=list(labels), index=rows["image_id"]).to_csv(cache)
    return probs


def row_for(
    name: str, rows: pd.DataFrame, y: np.ndarray, probs: np.ndarray, labels: tuple[str, ...], threshold: np.ndarray
) -> dict[str, Any]:
    """Overall accuracy, ROC-AUC, ECE, every cohort's accuracy, the worst cohort and the gap, per label."""
    from celeba.analysis.rates import calibration_curve
    from celeba.metrics import cohort_accuracy, label_metrics

    metrics = label_metrics(y, probs, labels, threshold)
    cohorts = cohort_accuracy(rows, y, probs, labels, threshold=threshold)
    out: dict[str, Any] = {"model": name, "threshold": dict(zip(labels, np.round(threshold, 2).tolist()))}
    for j, label in enumerate(labels):
        column = cohorts[f"{label}_accuracy"]
        out[label] = {
            "accuracy": metrics.at[label, "accuracy"],
            "roc_auc": metrics.at[label, "roc_auc"],
            "ece": calibration_curve(y[:, j], probs[:, j])[1],
            "cohorts": column.to_dict(),
            "cohort_n": cohorts["n"].to_dict(),
            "worst_cohort": column.idxmin(),
            "worst": column.min(),
            "gap": column.max() - column.min(),
        }
    return out


def balancing_threshold(rows: pd.DataFrame, y: np.ndarray, probs: np.ndarray, labels: tuple[str, ...]) -> np.ndarray:
    """Per label, the validation threshold that narrows the gap across the other label's cohorts the most."""
    from celeba.analysis.compute import balancing_thresholds, celeba_balancing_groups

    table = balancing_thresholds(y, probs, labels, celeba_balancing_groups(rows, labels, labels))
    return table.loc[list(labels), "balancing_threshold"].to_numpy(dtype=float)


def run(cfg: StudyConfig) -> dict[str, Any]:
    from celeba.data import labels_array, load_index, split

    index = load_index(cfg.data_dir)
    parts = {p: split(index, p) for p in ("validation", "test")}
    y = {p: labels_array(r, cfg.labels) for p, r in parts.items()}
    default = np.full(len(cfg.labels), 0.5)

    def probs(name: str, partition: str) -> np.ndarray:
        return probabilities(
            cfg.models_dir / f"{name}.keras", parts[partition], cfg.labels, cfg.cache / f"{name}-{partition}.csv"
        )

    present = [n for n in MITIGATIONS if (cfg.models_dir / f"{n}.keras").is_file()]
    table = [
        row_for(n, parts["test"], y["test"], probs(n, "test"), cfg.labels, default) | {"method": MITIGATIONS[n]}
        for n in present
    ]
    for name in ("celeba16k-bce", "celeba16k-balanced"):  # post-processing rows: a threshold chosen on validation
        if name in present:
            t = balancing_threshold(parts["validation"], y["validation"], probs(name, "validation"), cfg.labels)
            table.append(
                row_for(name, parts["test"], y["test"], probs(name, "test"), cfg.labels, t)
                | {"method": f"{MITIGATIONS[name]} + threshold balancing across the other label (validation)"}
            )

    def test_accuracy(name: str) -> dict[str, float]:
        row = row_for(name, parts["test"], y["test"], probs(name, "test"), cfg.labels, default)
        return {label: row[label]["accuracy"] for label in cfg.labels}

    curve = [
        {"train_images": n, "model": name, **test_accuracy(name)}
        for n, name in CURVE.items()
        if (cfg.models_dir / f"{name}.keras").is_file()
    ]
    names = dict.fromkeys([*present, *(c["model"] for c in curve)])  # table order, each once
    cards = {n: RunCard.load(cfg.models_dir / f"{n}.json").to_dict() for n in names}
    result = {
        "data_dir": str(cfg.data_dir),
        "test_images": len(parts["test"]),
        "validation_images": len(parts["validation"]),
        "mitigations": table,
        "learning_curve": curve,
        "training": {
            n: {
                k: card.get(k)
                for k in ("epochs_trained", "time_s", "train_images_per_s", "train_images_per_s_by_phase")
            }
            | {"train_images": card["data"]["train"]}
            for n, card in cards.items()
        },
    }
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "study.json").write_text(json.dumps(result, indent=2, default=float))
    (cfg.out / "study.md").write_text(markdown(result, cfg.labels))
    cfg.images.mkdir(parents=True, exist_ok=True)
    if curve:
        plot_curve(curve, cfg.labels, cfg.images / "learning_curve.png")
    if table:
        plot_mitigations(table, cfg.labels, cfg.images / "mitigations.png")
    return result


def markdown(result: dict[str, Any], labels: tuple[str, ...]) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = []
    for label in labels:
        cohorts = list(result["mitigations"][0][label]["cohorts"])
        lines += [
            f"### {label} on the {result['test_images']} test images",
            "",
            "| method | threshold | accuracy | ROC-AUC | ECE | " + " | ".join(cohorts) + " | worst | gap (pts) |",
            "|---" * (7 + len(cohorts)) + "|",
        ]
        for row in result["mitigations"]:
            r = row[label]
            lines.append(
                f"| {row['method']} | {row['threshold'][label]:.2f} | {pct(r['accuracy'])} | "
                f"{r['roc_auc']:.3f} | {r['ece']:.3f} | "
                + " | ".join(pct(r["cohorts"][c]) for c in cohorts)
                + f" | {pct(r['worst'])} | {pct(r['gap'])} |"
            )
        n = result["mitigations"][0][label]["cohort_n"]
        lines += ["", "Cohort sizes: " + ", ".join(f"{c} {n[c]}" for c in cohorts) + ".", ""]
    if result["learning_curve"]:
        lines += [
            "### Learning curve (plain BCE, same schedule)",
            "",
            "| train images | " + " | ".join(labels) + " |",
            "|---" * (1 + len(labels)) + "|",
        ]
        lines += [
            f"| {c['train_images']:,} | " + " | ".join(pct(c[label]) for label in labels) + " |"
            for c in result["learning_curve"]
        ]
    return "\n".join(lines) + "\n"


def plot_curve(curve: list[dict[str, Any]], labels: tuple[str, ...], path: Path) -> None:
    from celeba.plots import plt, save

    fig, ax = plt.subplots(figsize=(6.4, 4), layout="constrained")
    for label in labels:
        ax.plot([c["train_images"] for c in curve], [100 * c[label] for c in curve], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("train images (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Learning curve: ImageNet-pretrained MobileNetV2, 96 px,\n2 head + 4 fine-tuning epochs, plain BCE")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, path)


def plot_mitigations(table: list[dict[str, Any]], labels: tuple[str, ...], path: Path) -> None:
    from celeba.plots import plt, save

    fig, axes = plt.subplots(1, len(labels), figsize=(6.5 * len(labels), 4.6), squeeze=False, layout="constrained")
    for ax, label in zip(axes[0], labels):
        for row in table:
            r = row[label]
            ax.scatter(100 * r["worst"], 100 * r["accuracy"], s=60)
            ax.annotate(
                row["method"],
                (100 * r["worst"], 100 * r["accuracy"]),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
        ax.set_xlabel(f"worst-cohort accuracy (%)  [{table[0][label]['worst_cohort'] if table else ''} ...]")
        ax.set_ylabel("overall accuracy (%)")
        ax.set_title(f"{label}: overall vs worst cohort (test)")
        ax.grid(alpha=0.3)
    fig.suptitle("Bias mitigations, same data and schedule (ImageNet-pretrained, 96 px, 15,979 train images)")
    save(fig, path)


def main(argv: list[str] | None = None) -> None:
    from celeba.flags import parse_config

    cfg = parse_config(StudyConfig, argv, StudyConfig.__doc__)
    result = run(cfg)
    print((cfg.out / "study.md").read_text())
    print(
        f"wrote {cfg.out / 'study.json'}, {cfg.out / 'study.md'} and figures in {cfg.images}/"
        f" ({len(result['mitigations'])} rows, {len(result['learning_curve'])} curve points)"
    )


if __name__ == "__main__":
    main()
