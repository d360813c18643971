"""The analysis figures: matplotlib (Agg, headless), one function per PNG, sized to stay readable in a README."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

plt.rcParams.update({"font.size": 10, "axes.titlesize": 10, "figure.titlesize": 11})
MODEL_COLOURS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
ACCURACY_CMAP = "RdYlGn"


def save(fig: plt.Figure, path: Path, note: str = "") -> Path:
    """Write a PNG and free the figure; `note` (how the models were trained) goes under the title of every figure."""
    if note:
        fig.text(0.5, 0.0, note, ha="center", va="top", fontsize=8, color="0.35", wrap=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _grid(nrows: int, ncols: int, cell: tuple[float, float]) -> tuple[plt.Figure, np.ndarray]:
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(cell[0] * ncols, cell[1] * nrows), squeeze=False, layout="constrained"
    )
    return fig, axes


def _matrix(
    ax: plt.Axes,
    colour: np.ndarray,
    text: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    vmin: float = 0.5,
    vmax: float = 1.0,
    cmap: str = ACCURACY_CMAP,
) -> None:
    """A small annotated heatmap; empty cells (NaN) stay white."""
    ax.imshow(np.ma.masked_invalid(colour), cmap=cmap, vmin=vmin, vmax=vmax)
    for (i, j), value in np.ndenumerate(text):
        ax.text(
            j,
            i,
            value,
            ha="center",
            va="center",
            fontsize=9,
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "alpha": 0.75, "lw": 0},
        )
    ax.set_xticks(range(len(cols)), [c.replace("Not ", "Not\n").replace("_", " ") for c in cols])
    ax.set_yticks(range(len(rows)), [r.replace("_", " ") for r in rows])
    ax.tick_params(length=0)


def _levels(attribute: str) -> list[str]:
    return [attribute, f"Not {attribute}"]


def _cohort_cells(
    table: pd.DataFrame, pair: tuple[str, str], cell: Callable[[pd.Series], tuple[float, str]]
) -> tuple[np.ndarray, np.ndarray]:
    """The 2x2 cohorts of `pair` (rows: a, Not a; columns: b, Not b) as (values, texts); `cell(row)` gives both
    from a cohort's row of `table`, and a cohort absent from it stays NaN with "n=0"."""
    values = np.full((2, 2), np.nan)
    text = np.full((2, 2), "n=0", dtype=object)
    for i, first in enumerate(_levels(pair[0])):
        for j, second in enumerate(_levels(pair[1])):
            name = f"{first} & {second}"
            if name in table.index:
                values[i, j], text[i, j] = cell(table.loc[name])
    return values, text


def _accuracy_cell(row: pd.Series, label: str) -> tuple[float, str]:
    acc = float(row[f"{label}_accuracy"])
    return acc, f"{acc:.0%}\nn={int(row['n'])}"


def _share_cell(row: pd.Series, others: Sequence[str]) -> tuple[float, str]:
    """The cohort's share of the training images, its count and the positive rate of the other labels."""
    share = float(row["share"])
    rates = "\n".join(f"{label} {row[f'{label}_positive']:.0%}" for label in others)
    return share, f"n={int(row['n'])} ({share:.0%})" + (f"\n{rates}" if rates else "")


def cohort_heatmaps(
    tables: Mapping[str, pd.DataFrame], pair: tuple[str, str], labels: Sequence[str], path: Path, note: str = ""
) -> Path:
    """Accuracy of every label over the 2x2 cohorts of `pair`, with the cell counts; one row per model."""
    a, b = pair
    fig, axes = _grid(len(tables), len(labels), (3.2, 2.6))
    for r, (model, table) in enumerate(tables.items()):
        for c, label in enumerate(labels):
            acc, text = _cohort_cells(table, pair, partial(_accuracy_cell, label=label))
            _matrix(axes[r, c], acc, text, _levels(a), _levels(b))
            axes[r, c].set_title(f"{model}\n{label} accuracy")
    fig.suptitle(f"Accuracy per cohort: {a} x {b}")
    return save(fig, path, note)


def train_distribution(
    tables: Mapping[tuple[str, str], pd.DataFrame], labels: Sequence[str], path: Path, note: str = ""
) -> Path:
    """Training images per cohort and how often each label is positive there: where the model saw few examples."""
    ncols = min(2, len(tables))
    fig, axes = _grid(-(-len(tables) // ncols), ncols, (3.6, 3.1))
    for ax in axes.flat[len(tables) :]:
        ax.axis("off")
    for ax, ((a, b), table) in zip(axes.flat, tables.items()):
        others = [label for label in labels if label not in (a, b)]
        share, text = _cohort_cells(table, (a, b), partial(_share_cell, others=others))
        _matrix(ax, share, text, _levels(a), _levels(b), vmin=0.0, vmax=max(0.5, np.nanmax(share)), cmap="Blues")
        ax.set_title(f"{a} x {b}")
    fig.suptitle("Training partition: images per cohort (share) and label positive rate")
    return save(fig, path, note)


def confusion_grid(tables: Mapping[str, pd.DataFrame], path: Path, note: str = "") -> Path:
    """One confusion matrix per (label, group) and model: counts with the rate per true class."""
    first = next(iter(tables.values()))
    fig, axes = _grid(len(tables), len(first), (2.7, 2.7))
    for r, (model, table) in enumerate(tables.items()):
        for c, ((label, group), row) in enumerate(table.iterrows()):
            counts = np.array([[row.tn, row.fp], [row.fn, row.tp]], dtype=float)
            rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
            text = np.vectorize(lambda n, p: f"{int(n)}\n{p:.0%}")(counts, rates)
            _matrix(
                axes[r, c], rates, text, [f"not {label}", label], ["pred 0", "pred 1"], vmin=0, vmax=1, cmap="Blues"
            )
            axes[r, c].set_ylabel("true")
            axes[r, c].set_title(f"{model}\n{label}" + ("" if group == "all" else f" | {group}"))
    fig.suptitle("Confusion matrices (count, rate within the true class)")
    return save(fig, path, note)


def latent_space(
    points: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    labels: Sequence[str],
    title: str,
    path: Path,
    note: str = "",
) -> Path:
    """2-D projection of the embeddings, coloured by ground truth (left) and by prediction (right), per label."""
    fig, axes = _grid(len(labels), 2, (3.6, 3.3))
    colours = np.array(["#1f77b4", "#d62728"])
    for r, label in enumerate(labels):
        for c, (values, kind) in enumerate(((y_true[:, r], "true"), (y_pred[:, r], "predicted"))):
            ax = axes[r, c]
            ax.scatter(points[:, 0], points[:, 1], s=4, c=colours[values.astype(int)], alpha=0.6, linewidths=0)
            ax.set_title(f"{label}: {kind}")
            ax.set_xticks([])
            ax.set_yticks([])
            for value, name in ((1, label), (0, f"not {label}")):
                ax.scatter([], [], s=12, c=colours[value], label=name)
            ax.legend(loc="best", fontsize=8, markerscale=1.5, frameon=False)
    fig.suptitle(title)
    return save(fig, path, note)


def gradcam_grid(rows: Sequence[tuple[str, np.ndarray, Sequence[str]]], title: str, path: Path, note: str = "") -> Path:
    """Rows of Grad-CAM overlays: (row title, uint8 images (k, H, W, 3), one caption per image)."""
    ncols = max(len(images) for _, images, _ in rows)
    fig, axes = _grid(len(rows), max(ncols, 1), (1.6, 1.9))
    for r, (row_title, images, captions) in enumerate(rows):
        for c in range(axes.shape[1]):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c])
                ax.set_title(captions[c], fontsize=8)
        axes[r, 0].text(
            -0.08, 0.5, row_title, transform=axes[r, 0].transAxes, rotation=90, ha="right", va="center", fontsize=9
        )
    fig.suptitle(title)
    return save(fig, path, note)


def slice_curves(
    tables: Mapping[str, pd.DataFrame], labels: Sequence[str], stats: Sequence[str], path: Path, note: str = ""
) -> Path:
    """Accuracy per quantile bin of each image statistic (x ticks: bin and its size), one line per model."""
    fig, axes = _grid(len(labels), len(stats), (4.4, 2.9))
    for c, stat in enumerate(stats):
        for r, label in enumerate(labels):
            ax = axes[r, c]
            lowest = 0.5
            for k, (model, table) in enumerate(tables.items()):
                part = table[table["kind"] == stat]
                acc = part[f"{label}_accuracy"].to_numpy()
                error = np.sqrt(acc * (1 - acc) / np.maximum(part["n"].to_numpy(), 1))  # binomial standard error
                ax.errorbar(
                    np.arange(len(part)) + 0.06 * k,
                    acc,
                    error,
                    fmt="o-",
                    capsize=3,
                    color=MODEL_COLOURS[k % 10],
                    label=model,
                )
                lowest = min(lowest, np.nanmin(acc - error) - 0.03)
            ax.set_xticks(
                range(len(part)), [f"{s.split(' ', 1)[1]}\nn={n}" for s, n in zip(part.index, part["n"])], fontsize=7
            )
            ax.set_title(f"{label} accuracy vs {stat.replace('_', ' ')}")
            ax.set_ylim(max(0.0, lowest), 1.0)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Slices by image statistics (quantile bins; bars: binomial standard error)")
    return save(fig, path, note)


def reliability(
    curves: Mapping[str, Mapping[str, pd.DataFrame]],
    ece: pd.DataFrame,
    labels: Sequence[str],
    path: Path,
    note: str = "",
) -> Path:
    """Observed positive rate vs mean predicted probability per bin; the diagonal is perfect calibration."""
    fig, axes = _grid(1, len(labels), (3.6, 3.6))
    for c, label in enumerate(labels):
        ax = axes[0, c]
        ax.plot([0, 1], [0, 1], ":", color="0.5")
        for k, (model, per_label) in enumerate(curves.items()):
            curve = per_label[label]
            ax.plot(
                curve["confidence"],
                curve["observed"],
                "o-",
                color=MODEL_COLOURS[k % 10],
                label=f"{model} (ECE {ece.at[(model, label), 'ece']:.3f})",
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean predicted probability")
        ax.set_ylabel("observed positive rate")
        ax.set_title(label)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("Reliability diagrams")
    return save(fig, path, note)


def threshold_curves(
    curves: Mapping[str, Mapping[str, pd.DataFrame]], thresholds: pd.DataFrame, path: Path, note: str = ""
) -> Path:
    """Cohort accuracy vs decision threshold; dotted: the default, solid: the gap-narrowing threshold."""
    labels = list(next(iter(curves.values())))
    fig, axes = _grid(len(curves), len(labels), (4.2, 3.0))
    for r, (model, per_label) in enumerate(curves.items()):
        for c, label in enumerate(labels):
            ax, curve, row = axes[r, c], per_label[label], thresholds.loc[(model, label)]
            for k, cohort in enumerate(curve.columns):
                ax.plot(
                    curve.index,
                    curve[cohort],
                    color="black" if cohort == "all" else MODEL_COLOURS[k % 10],
                    lw=2.2 if cohort == "all" else 1.4,
                    ls="--" if cohort == "all" else "-",
                    label=cohort,
                )
            ax.axvline(row["threshold"], color="0.5", ls=":")
            ax.axvline(row["balancing_threshold"], color="0.2")
            ax.set_title(
                f"{model}: {label}\ngap {row['gap']:.0%} at {row['threshold']:g}, "
                f"{row['gap_balanced']:.0%} at {row['balancing_threshold']:g}"
            )
            ax.set_xlabel("decision threshold")
            ax.set_ylabel("accuracy")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7, loc="best")
    fig.suptitle("Accuracy per cohort vs threshold (dotted: default, solid: gap-narrowing; reported, not applied)")
    return save(fig, path, note)


def group_accuracy(
    groups: pd.DataFrame, labels: Sequence[str], path: Path, note: str = "", groupings: Sequence[str] = ()
) -> Path:
    """Accuracy per group with its 95% interval, one panel per label, one colour per model; groups below
    --min-slice are drawn hollow (listed, not headlined). Group columns in the order of `groupings`."""
    rank = {g: i for i, g in enumerate(dict.fromkeys([*groupings, *groups["grouping"]]))}
    keys = groups[["grouping", "group", "order"]].drop_duplicates()
    keys = keys.assign(rank=keys["grouping"].map(rank)).sort_values(["rank", "order"], kind="stable")
    order = {(g, v): i for i, (g, v) in enumerate(zip(keys["grouping"], keys["group"]))}
    models = list(dict.fromkeys(groups["model"]))
    fig, axes = _grid(1, len(labels), (4.6, 0.8 + 0.28 * len(order) * max(1, len(models)) ** 0.5))
    for c, label in enumerate(labels):
        ax = axes[0, c]
        for k, model in enumerate(models):
            part = groups[(groups["model"] == model) & (groups["label"] == label)]
            y = np.array([order[g, v] for g, v in zip(part["grouping"], part["group"])]) + 0.15 * k
            acc = part["accuracy"].to_numpy(float)
            err = np.clip(
                np.vstack([acc - part["ci_low"].to_numpy(float), part["ci_high"].to_numpy(float) - acc]), 0, None
            )
            colour = MODEL_COLOURS[k % 10]
            ax.errorbar(acc, y, xerr=err, fmt="none", ecolor=colour, capsize=2, lw=1)
            small = part["small"].to_numpy(bool)
            ax.scatter(acc[~small], y[~small], color=colour, s=18, zorder=3, label=model)
            ax.scatter(acc[small], y[small], facecolors="white", edgecolors=colour, s=18, zorder=3)
        n = groups[groups["label"] == label].groupby(["grouping", "group"])["n"].max()
        ax.set_yticks(range(len(order)), [f"{g}: {v} (n={n.get((g, v), 0)})" for g, v in order], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel(f"{label} accuracy (95% Wilson interval)")
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Accuracy per group (hollow: below --min-slice; photos without a face count as errors)")
    return save(fig, path, note)


def latent_by_group(
    points: np.ndarray, groups: Mapping[str, np.ndarray], title: str, path: Path, note: str = ""
) -> Path:
    """2-D projection of the embeddings coloured by the group of each photo, one panel per group column."""
    fig, axes = _grid(1, max(1, len(groups)), (3.8, 3.5))
    for ax, (name, values) in zip(axes.flat, groups.items()):
        for k, value in enumerate(dict.fromkeys(values)):
            mask = values == value
            ax.scatter(
                points[mask, 0],
                points[mask, 1],
                s=5,
                alpha=0.7,
                linewidths=0,
                color=MODEL_COLOURS[k % 10],
                label=f"{value} ({mask.sum()})",
            )
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=2, frameon=False, loc="best")
    fig.suptitle(title)
    return save(fig, path, note)
