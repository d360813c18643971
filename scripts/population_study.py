"""Side by side, same data: models (and post-processing rows) on CelebA test and on the evaluation part of a labelled
photo folder (UTKFace), each table with n, bootstrap 95% intervals, average, worst group and group-balanced accuracy,
and the "no collateral damage" check against the first model.

    python scripts/population_study.py --data-dir ../shared/data/celeba --photos ../shared/data/utkface \
        --model models/celeba16k-bce.keras --model models/multisource16k-bce.keras ... --out docs/study

Probabilities are cached per model file (reports/study-cache/), so adding a model re-scores only that one.
The photos' faces are found and aligned once (the crop cache train and repair use), like `predict` does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")

import numpy as np
import pandas as pd

from celeba.analysis.tables import markdown_table
from celeba.data import labels_array, load_index, make_dataset, split
from celeba.groups import GroupReport, auc_within, group_of, group_report
from celeba.sources import PhotoSource, age_band, photo_rows

COLLATERAL = 0.02  # a group may not fall more than this below the reference, beyond its interval


def probabilities(model_path: Path, rows: pd.DataFrame, what: str, cache: Path, wanted: tuple[str, ...]) -> np.ndarray:
    """The model's probabilities for the rows (cached by model file content and row list)."""
    key = hashlib.sha1(model_path.read_bytes() + "|".join(rows["path"]).encode()).hexdigest()[:16]
    file = cache / f"{model_path.stem}-{what}-{'-'.join(wanted)}-{key}.npy"
    if file.is_file():
        return np.load(file)
    from celeba.model import load_model, model_image_size

    model, labels = load_model(model_path)
    filled = rows.assign(**{label: rows[label].fillna(0) for label in labels})
    probs = model.predict(make_dataset(filled, labels, model_image_size(model), 64), verbose=0)
    probs = probs[:, [labels.index(label) for label in wanted]]
    cache.mkdir(parents=True, exist_ok=True)
    np.save(file, probs)
    return probs


def celeba_reports(rows: pd.DataFrame, probs: np.ndarray, labels: tuple[str, ...]) -> dict[str, GroupReport]:
    """Each label's accuracy per group of all the labels' values (Male x Young: 4 groups)."""
    groups = group_of(rows, labels)
    y = labels_array(rows, labels)
    return {f"celeba {label}": group_report(label, y[:, j], probs[:, j], groups) for j, label in enumerate(labels)}


def photo_reports(rows: pd.DataFrame, probs: np.ndarray) -> dict[str, GroupReport]:
    adults, children, over40 = rows["age"] >= 18, rows["age"] < 18, rows["age"] >= 40
    male, young = rows["Male"].to_numpy(float), rows["Young"].to_numpy(float)
    race_gender = group_of(rows, ["race", "gender"])
    return {
        "photos Male, adults by race x gender": group_report(
            "Male", male[adults], probs[adults.to_numpy(), 0], race_gender[adults.to_numpy()]
        ),
        "photos Male, children by age band": group_report(
            "Male", male[children], probs[children.to_numpy(), 0], group_of(rows[children], ["age_band"])
        ),
        "photos Young (age<30), all by gender": group_report("Young", young, probs[:, 1], group_of(rows, ["gender"])),
        "photos Young, people 40+ by gender": group_report(
            "Young", young[over40], probs[over40.to_numpy(), 1], group_of(rows[over40], ["gender"])
        ),
    }


def auc_rows(
    rows: pd.DataFrame,
    probs: np.ndarray,
    labels: tuple[str, ...],
    photos: pd.DataFrame | None,
    photo_p: np.ndarray | None,
) -> dict[str, dict[str, float]]:
    """ROC-AUC of each label within each value of the other label on CelebA test (and Young within each gender on
    the photos): the ranking inside a group, which thresholds and last-layer refits cannot change."""
    y = labels_array(rows, labels)
    out = {
        f"celeba {label} within {other}": auc_within(y[:, j], probs[:, j], group_of(rows, [other]))
        for j, label in enumerate(labels)
        for other in labels
        if other != label
    }
    if photos is not None and photo_p is not None:
        young = photos["Young"].to_numpy(float)
        out["photos Young within gender"] = auc_within(young, photo_p[:, 1], group_of(photos, ["gender"]))
    return out


def auc_lines(aucs: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """A markdown table: one row per model, one column per (table, group)."""
    first = next(iter(aucs.values()))
    columns = [(table, group) for table, groups in first.items() for group in groups]
    head = "| model | " + " | ".join(f"{table}: {group}" for table, group in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1)]
    for name, tables in aucs.items():
        cells = [f"{tables.get(t, {}).get(g, float('nan')):.3f}" for t, g in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def thresholds_by_other(
    val_y: np.ndarray, val_p: np.ndarray, label: int, other: int, known: bool
) -> tuple[dict[int, float], np.ndarray]:
    """Per value of the other label (its truth, or the model's prediction of it), the threshold on `label` that
    maximises the worse of the two groups inside it (label = 1 and label = 0: min(TPR, TNR)) on validation.
    Returns (thresholds, grid used)."""
    grid = np.linspace(0.05, 0.95, 91)
    side = val_y[:, other] if known else (val_p[:, other] >= 0.5).astype(float)
    chosen = {}
    for value in (0, 1):
        rows = side == value
        truth, prob = val_y[rows, label] > 0.5, val_p[rows, label]
        worst = [min((prob[truth] >= t).mean(), (prob[~truth] < t).mean()) for t in grid]
        chosen[value] = float(grid[int(np.argmax(worst))])
    return chosen, grid


def apply_thresholds(probs: np.ndarray, label: int, side: np.ndarray, chosen: dict[int, float]) -> np.ndarray:
    """Probabilities re-centred so that 0.5 is the chosen threshold of each value (`side`) of the other label."""
    t = np.where(side == 1, chosen[1], chosen[0])
    out = probs.copy()
    p = probs[:, label]
    out[:, label] = np.where(p >= t, 0.5 + 0.5 * (p - t) / (1 - t), 0.5 * p / t)
    return out


def load_photos(folder: Path, split_file: Path) -> pd.DataFrame:
    """The evaluation part of a labelled folder (faces found and cached), with age, gender, race and age band."""
    source = PhotoSource(folder / "images", folder / "labels.csv", None, ("Young=age<30",), split_file, None)
    photos = photo_rows(source, ("Male", "Young"), ["evaluation"])
    raw = pd.read_csv(folder / "labels.csv").set_index("file")
    photos = photos.join(raw[["age", "gender", "race"]], on="image_id")
    photos["age_band"] = age_band(photos["age"]).astype(str)
    return photos


def threshold_rows(
    name: str,
    labels: tuple[str, ...],
    val_y: np.ndarray,
    val_p: np.ndarray,
    test: pd.DataFrame,
    photos: pd.DataFrame | None,
    scores: dict[str, np.ndarray],
) -> dict[str, dict]:
    """Rows for one label's threshold per value of the other: known (CelebA only, a bound) and predicted."""
    out: dict[str, dict] = {}
    test_p = scores["test"]
    for label, other in ((1, 0), (0, 1)):
        for known in (True, False):
            chosen, _ = thresholds_by_other(val_y, val_p, label, other, known)
            row = f"{name} + {labels[label]} threshold per {labels[other]} ({'known' if known else 'predicted'})"
            side = labels_array(test, labels)[:, other] if known else test_p[:, other] >= 0.5
            out[row] = dict(celeba_reports(test, apply_thresholds(test_p, label, side, chosen), labels))
            if not known and photos is not None:
                photo_p = scores["photos"]
                out[row] |= photo_reports(photos, apply_thresholds(photo_p, label, photo_p[:, other] >= 0.5, chosen))
            out[row]["thresholds"] = chosen
    return out


def collateral(reference: dict[str, GroupReport], other: dict[str, GroupReport]) -> list[str]:
    """Groups that fall more than COLLATERAL below the reference with the whole interval below it."""
    found = []
    for name, ref in reference.items():
        table = other[name].table
        for group, row in ref.table.iterrows():
            if group in table.index and table.loc[group, "high"] < row["accuracy"] - COLLATERAL:
                found.append(f"{name}: {group} {row['accuracy']:.3f} -> {table.loc[group, 'accuracy']:.3f}")
    return found


def fmt(report: GroupReport) -> str:
    return f"{100 * report.average:.1f} / {100 * report.worst:.1f} / {100 * report.balanced:.1f}"


def plot(summary: dict[str, dict], tables: list[str], path: Path) -> None:
    """Average against worst-group accuracy, one panel per table, one point per model or row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 4.4))
    names = list(summary)
    colours = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for ax, table in zip(axes, tables):
        for i, name in enumerate(names):
            row = summary[name].get(table)
            if isinstance(row, dict):
                ax.scatter(100 * row["average"], 100 * row["worst"], color=colours(i), s=40, label=name)
        ax.set_title(table, fontsize=9)
        ax.set_xlabel("average accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("worst-group accuracy (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * (len(names) // 3), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--photos", type=Path, help="folder with images/, labels.csv (Male and Young labels only)")
    parser.add_argument("--split-file", type=Path, default=Path("data/utkface/split.csv"))
    parser.add_argument("--labels", nargs=2, default=["Male", "Young"], help="two labels; each is grouped by both")
    parser.add_argument("--model", type=Path, action="append", required=True, help="the first is the reference")
    parser.add_argument("--thresholds-of", type=Path, help="add per-other-attribute threshold rows for this model")
    parser.add_argument("--out", type=Path, default=Path("docs/study"))
    parser.add_argument("--cache", type=Path, default=Path("reports/study-cache"))
    parser.add_argument("--figure", type=Path, help="average against worst group, per table (a PNG)")
    parser.add_argument("--figure-tables", nargs="+", help="the tables the figure shows (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from celeba.runtime import quiet_tensorflow

    quiet_tensorflow()
    labels = tuple(args.labels)
    if args.photos is not None and labels != ("Male", "Young"):
        parser.error("--photos: the photo tables are for --labels Male Young")
    index = load_index(args.data_dir)
    test, val = split(index, "test"), split(index, "validation")
    photos = None
    if args.photos is not None:
        photos = load_photos(args.photos, args.split_file)

    rows: dict[str, dict[str, GroupReport]] = {}
    aucs: dict[str, dict[str, dict[str, float]]] = {}
    for path in args.model:
        scores = {"test": probabilities(path, test, "test", args.cache, labels)}
        rows[path.stem] = celeba_reports(test, scores["test"], labels)
        if photos is not None:
            scores["photos"] = probabilities(path, photos, "photos", args.cache, labels)
            rows[path.stem] |= photo_reports(photos, scores["photos"])
        aucs[path.stem] = auc_rows(test, scores["test"], labels, photos, scores.get("photos"))
        if args.thresholds_of is not None and path == args.thresholds_of:
            val_p = probabilities(path, val, "validation", args.cache, labels)
            rows |= threshold_rows(path.stem, labels, labels_array(val, labels), val_p, test, photos, scores)
    reference = rows[args.model[0].stem]
    args.out.mkdir(parents=True, exist_ok=True)
    tables = list(reference)
    lines = [
        "| model | " + " | ".join(tables) + " | collateral (groups > 2 pts below the reference, beyond the CI) |",
        "|" + "---|" * (len(tables) + 2),
    ]
    summary = {}
    for name, reports in rows.items():
        cells = [fmt(reports[t]) if t in reports else "n/a" for t in tables]
        damage = collateral(
            {k: v for k, v in reference.items() if k in reports}, {k: v for k, v in reports.items() if k in tables}
        )
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'; '.join(damage) or 'none'} |")
        summary[name] = {t: reports[t].summary() for t in tables if t in reports} | {"collateral": damage}
        if name in aucs:
            summary[name]["auc_within"] = aucs[name]
        if "thresholds" in reports:
            summary[name]["thresholds"] = reports["thresholds"]
    detail = []
    for name, reports in rows.items():
        detail.append(f"\n### {name}\n")
        for t in tables:
            if t in reports:
                table = reports[t].table[["n", "accuracy", "low", "high", "tpr", "fpr"]]
                detail.append(f"\n{t} (average {fmt(reports[t])} avg / worst / balanced)\n\n" + markdown_table(table))
    counts = f"CelebA test: {len(test)} images" + (
        f"; photos evaluation part: {len(photos)} with a face" if photos is not None else ""
    )
    (args.out / "study.md").write_text(
        f"Made by `python scripts/population_study.py {shlex.join(sys.argv[1:])}`.\n\n"
        f"Cells: average / worst group / group-balanced accuracy, in %. {counts}.\n\n"
        + "\n".join(lines)
        + "\n"
        + "\n## ROC-AUC within groups\n\nEach label's ROC-AUC inside each value of the other label (threshold-free; "
        "threshold rows share their model's).\n\n"
        + "\n".join(auc_lines(aucs))
        + "\n"
        + "\n## Per group (95% bootstrap intervals)\n"
        + "\n".join(detail)
        + "\n"
    )
    (args.out / "study.json").write_text(json.dumps(summary, indent=2, default=float))
    if args.figure is not None:
        plot(summary, args.figure_tables or tables, args.figure)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
