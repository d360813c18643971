"""The numbers of the bias report, from probabilities and truths only: pure numpy / pandas, no model, no files.

`compute()` takes a `Population` and each model's probabilities and returns an `Analysis`; the tables, figures and
Markdown report are drawn from it. Every group table carries its n and a Wilson 95% interval, and a photo whose face
could not be scored stays in its group's n and counts as an error of the system (it got no answer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from celeba.analysis.population import Population, group_values
from celeba.analysis.rates import (
    ALL,
    _ordered_groups,
    calibration_curve,
    face_counts,
    group_metrics,
    worst_groups,
)
from celeba.groups import worst_and_balanced
from celeba.metrics import cohort_accuracy, cohort_names, label_metrics

SPLIT_BY = "Male"  # confusion matrices of the other labels are also split by gender (women falsely called Young)
STATS = ("mean_luminance", "sharpness")
MIN_CELL = 30  # cohorts with fewer test images are left out of the headline gaps (too noisy to rank)
THRESHOLD_GRID = np.round(np.arange(0.02, 0.99, 0.01), 2)


@dataclass
class Analysis:
    """Everything the report shows; tables are pandas frames, one entry per model where models differ."""

    labels: tuple[str, ...]
    models: list[str]
    notes: list[str]
    source: str
    derivations: dict[str, str]
    threshold: float
    min_slice: int
    summary_grouping: str  # the grouping whose groups the summary and deltas show (CelebA: the first pair)
    faces: pd.DataFrame  # face status counts, overall and per group of every single grouping
    skipped: pd.DataFrame  # files that could not enter the analysis, with the reason
    groups: pd.DataFrame  # model, label, grouping, group -> n, accuracy and its CI, ROC-AUC, FPR, FNR, ECE
    metrics: dict[str, pd.DataFrame]  # per model: per-label metrics on the scored faces
    confusion: dict[str, pd.DataFrame]  # per model; other labels split by SPLIT_BY where it is known
    calibration: pd.DataFrame  # (model, label) -> ECE, Brier
    curves: dict[str, dict[str, pd.DataFrame]]  # model -> label -> reliability curve
    thresholds: pd.DataFrame  # (model, label) -> default and cohort-balancing threshold
    threshold_curves: dict[str, dict[str, pd.DataFrame]]  # model -> label -> accuracy per group vs threshold
    summary: pd.DataFrame  # headline numbers, models side by side, deltas to the first
    findings: list[str]
    predictions: pd.DataFrame  # one row per photo: truth, groups, face status, every model's probabilities
    cohorts: dict[tuple[str, str], dict[str, pd.DataFrame]] = field(default_factory=dict)  # CelebA 2x2 cohorts
    train_distribution: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)

    def worst(self, top: int = 8) -> pd.DataFrame:
        """Per model and label, the least accurate groups of at least --min-slice photos (the headline)."""
        return worst_groups(self.groups, top)

    def small(self) -> pd.DataFrame:
        """Groups below --min-slice: listed, never headlined."""
        return self.groups[self.groups["small"] & (self.groups["grouping"] != ALL)]


# --------------------------------------------------------------------------- CelebA tables


def train_distribution(train: pd.DataFrame, pair: Sequence[str], labels: Sequence[str]) -> pd.DataFrame:
    """Training images per cohort, their share, and each label's positive rate inside the cohort."""
    groups = train.groupby(cohort_names(train, pair).to_numpy())
    table = groups[list(labels)].mean().add_suffix("_positive")
    table.insert(0, "share", groups.size() / len(train))
    table.insert(0, "n", groups.size())
    return table.rename_axis("cohort")


def _known(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return ~np.isnan(y) & ~np.isnan(p)


def per_label_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, labels: Sequence[str], threshold: float = 0.5
) -> pd.DataFrame:
    """`celeba.metrics.label_metrics` per label over the rows whose truth is known and whose face was scored."""
    parts = []
    for j, label in enumerate(labels):
        mask = _known(y_true[:, j], y_prob[:, j])
        if mask.any():
            parts.append(label_metrics(y_true[mask, j : j + 1], y_prob[mask, j : j + 1], [label], threshold))
    return pd.concat(parts)


def confusion_table(
    frame: pd.DataFrame,
    y_true: np.ndarray,
    y_prob: np.ndarray,
    labels: Sequence[str],
    split_by: str = SPLIT_BY,
    threshold: float = 0.5,
) -> pd.DataFrame:
    """Counts and error rates per label, overall and inside each `split_by` group (the other labels only)."""
    by = frame[split_by].to_numpy(float) if split_by in frame.columns else np.full(len(frame), np.nan)
    masks = {ALL: np.ones(len(frame), bool), split_by: by == 1, f"Not {split_by}": by == 0}
    parts = []
    for group, mask in masks.items():
        if not mask.any():
            continue
        m = per_label_metrics(y_true[mask], y_prob[mask], labels, threshold)[["n", "accuracy", "tn", "fp", "fn", "tp"]]
        m["fpr"] = m["fp"] / (m["fp"] + m["tn"]).replace(0, np.nan)  # no negatives: no rate, not a perfect one
        m["fnr"] = m["fn"] / (m["fn"] + m["tp"]).replace(0, np.nan)
        parts.append(m.assign(group=group).reset_index())
    table = pd.concat(parts)
    table = table[(table["group"] == ALL) | (table["label"] != split_by)]
    order = {label: i for i, label in enumerate(labels)}
    table = table.sort_values("label", key=lambda s: s.map(order), kind="stable")
    return table.set_index(["label", "group"])


# --------------------------------------------------------------------------- thresholds


def threshold_curves(
    y_true: np.ndarray, y_prob: np.ndarray, groups: np.ndarray, grid: np.ndarray = THRESHOLD_GRID
) -> pd.DataFrame:
    """One label's accuracy inside every group (columns, plus 'all') at every threshold (rows); rows with unknown
    truth or no scored face are left out."""
    mask = _known(y_true, y_prob)
    correct = (y_prob[mask, None] >= grid[None, :]) == (y_true[mask, None] >= 0.5)
    curves = pd.DataFrame(correct, columns=grid).groupby(np.asarray(groups)[mask]).mean().T
    curves[ALL] = correct.mean(axis=0)
    return curves.rename_axis("threshold")


def balancing_grouping(label: str, groups: Sequence[str]) -> str:
    """The group column a label is balanced across: the first one that is not the label itself (Young is balanced
    across Male / Not Male; across its own classes 'balancing' would only trade recall for specificity)."""
    return next((g for g in groups if g != label), groups[0])


def celeba_balancing_groups(
    frame: pd.DataFrame, labels: Sequence[str], by: Sequence[str]
) -> dict[str, tuple[str, np.ndarray]]:
    """For `balancing_thresholds` on 0/1 attribute columns: each label across the cohorts of the other attributes
    of `by` (Young across Male / Not Male)."""
    groups = {}
    for label in labels:
        others = [a for a in by if a != label] or list(by)
        groups[label] = (" x ".join(others), cohort_names(frame, others).to_numpy())
    return groups


def balancing_thresholds(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    labels: Sequence[str],
    groups: Mapping[str, tuple[str, np.ndarray]],
    threshold: float = 0.5,
    tolerance: float = 0.02,
) -> pd.DataFrame:
    """Per label, the threshold that minimises the accuracy gap (max - min) between its groups (`groups[label]`:
    grouping name, group of every row), among the thresholds whose overall accuracy is within `tolerance` of the
    best (else "everything negative" often wins). Reported, never applied to the other results."""
    records = []
    for j, label in enumerate(labels):
        name, values = groups[label]
        curves = threshold_curves(y_true[:, j], y_prob[:, j], values)
        cohorts = curves.drop(columns=ALL)
        gaps = (cohorts.max(axis=1) - cohorts.min(axis=1)).to_numpy()
        overall = curves[ALL].to_numpy()
        gaps = np.where(overall >= overall.max() - tolerance, gaps, np.inf)
        best = np.lexsort((-overall, gaps))[0]  # smallest allowed gap, then highest accuracy
        default = threshold_curves(y_true[:, j], y_prob[:, j], values, np.array([threshold])).iloc[0]
        at_default = default.drop(ALL)
        records.append(
            {
                "label": label,
                "cohorts": name,
                "threshold": threshold,
                "gap": at_default.max() - at_default.min(),
                "worst_cohort": at_default.idxmin(),
                "accuracy": default[ALL],
                "balancing_threshold": float(curves.index[best]),
                "gap_balanced": float(gaps[best]),
                "accuracy_balanced": float(curves[ALL].iloc[best]),
            }
        )
    return pd.DataFrame(records).set_index("label")


# --------------------------------------------------------------------------- summary and findings


def summary(
    groups: pd.DataFrame, metrics: pd.DataFrame, calibration: pd.DataFrame, labels: Sequence[str], grouping: str
) -> pd.Series:
    """The headline numbers of one model (its rows of `groups`), as one comparable column."""
    values: dict[str, float] = {}
    for label in labels:
        rows = groups[groups["label"] == label]
        overall = rows[rows["grouping"] == ALL].iloc[0]
        values[f"{label} accuracy"] = overall["accuracy"]
        values[f"{label} F1"] = metrics.at[label, "f1"]
        values[f"{label} ROC-AUC"] = metrics.at[label, "roc_auc"]
        values[f"{label} ECE"] = calibration.at[label, "ece"]
        column = rows[rows["grouping"] == grouping].sort_values("order").set_index("group")["accuracy"]
        for group, acc in column.items():
            values[f"{label} accuracy | {group}"] = acc
        values[f"{label} gap (max - min) over {grouping}"] = column.max() - column.min()
        worst, _, balanced = worst_and_balanced(column) if column.notna().any() else (np.nan, "", np.nan)
        values[f"{label} worst group over {grouping}"] = worst
        values[f"{label} group-balanced accuracy over {grouping}"] = balanced
    return pd.Series(values)


def delta_table(summaries: dict[str, pd.Series]) -> pd.DataFrame:
    """Models side by side, plus each model minus the first (the reference)."""
    table = pd.DataFrame(summaries).rename_axis("metric")
    reference = table.columns[0]
    for name in table.columns[1:]:
        table[f"{name} - {reference}"] = table[name] - table[reference]
    return table


def pts(difference: float) -> str:
    """A difference of two rates in percentage points ("a gap of 14.3%" would read as a relative change)."""
    return f"{difference * 100:.1f} pts"


def findings(
    cohorts: dict[str, pd.DataFrame],
    confusion: dict[str, pd.DataFrame],
    labels: Sequence[str],
    split_by: str = SPLIT_BY,
) -> list[str]:
    """Plain sentences for the top of the report: each label's cohort gap, error rates by gender, and deltas."""
    lines, gaps = [], {}
    for model, table in cohorts.items():
        big_enough = table["n"] >= MIN_CELL
        for label in labels:
            acc = table[f"{label}_accuracy"]
            small = ", ".join(f"{c} (n={table.at[c, 'n']})" for c in acc.index[~big_enough])
            if big_enough.sum() >= 2:  # cells of a handful of images would make the headline gap noise
                acc = acc[big_enough]
            caveat = (
                (
                    f"; left out, under {MIN_CELL} images: {small}"
                    if big_enough.sum() >= 2
                    else f"; caution, under {MIN_CELL} images: {small}"
                )
                if small
                else ""
            )
            gaps[model, label] = acc.max() - acc.min()
            lines.append(
                f"{model}: {label} accuracy ranges from {acc.min():.1%} ({acc.idxmin()}, "
                f"n={table.at[acc.idxmin(), 'n']}) to {acc.max():.1%} ({acc.idxmax()}, "
                f"n={table.at[acc.idxmax(), 'n']}), a gap of {pts(gaps[model, label])}{caveat}."
            )
        for label in labels:
            if label == split_by:
                continue
            rate = confusion[model]["fpr"]
            groups = [g for g in (f"Not {split_by}", split_by) if (label, g) in rate.index]
            if len(groups) == 2:
                lines.append(
                    f"{model}: {label} false-positive rate {rate[label, groups[0]]:.1%} ({groups[0]}) vs "
                    f"{rate[label, groups[1]]:.1%} ({groups[1]})."
                )
    models = list(cohorts)
    for model in models[1:]:
        for label in labels:
            before, after = gaps[models[0], label], gaps[model, label]
            verdict = "narrower" if after < before else "wider" if after > before else "unchanged"
            lines.append(
                f"{label} cohort gap {pts(before)} ({models[0]}) -> {pts(after)} ({model}): {verdict} "
                f"by {pts(abs(after - before))}."
            )
    return lines


def group_findings(groups: pd.DataFrame, min_slice: int) -> list[str]:
    """Per model and label: the worst group of at least --min-slice photos, then the worst pair of groups, each
    against everyone."""
    lines = []
    for (model, label), rows in groups.groupby(["model", "label"], sort=False):
        overall = rows[rows["grouping"] == ALL].iloc[0]
        big = rows[~rows["small"] & (rows["grouping"] != ALL)]
        if big.empty:
            lines.append(f"{model}: {label}: no group has at least {min_slice} photos (--min-slice).")
        is_pair = big["grouping"].str.contains(" x ")
        for kind, part in (("group", big[~is_pair]), ("pair of groups", big[is_pair])):
            if len(part):
                w = part.iloc[0]
                lines.append(
                    f"{model}: {label}: least accurate {kind} {w['grouping']} = {w['group']}: "
                    f"{w['accuracy']:.1%} (95% CI {w['ci_low']:.1%}-{w['ci_high']:.1%}, n={w['n']}) vs "
                    f"{overall['accuracy']:.1%} overall (n={overall['n']})."
                )
    return lines


# --------------------------------------------------------------------------- Grad-CAM picks


def saliency_picks(y_true: np.ndarray, y_prob: np.ndarray, k: int, threshold: float) -> dict[str, np.ndarray]:
    """Row indices: the highest scores, the lowest scores, and the most confident errors (scored, known rows)."""
    rows = np.flatnonzero(_known(y_true, y_prob))
    order = rows[np.argsort(y_prob[rows], kind="stable")]
    return {
        "highest": order[::-1][:k],
        "lowest": order[:k],
        "errors": confident_errors(y_true, y_prob, rows, k, threshold),
    }


def confident_errors(y_true: np.ndarray, y_prob: np.ndarray, rows: np.ndarray, k: int, threshold: float) -> np.ndarray:
    """Among `rows`, the k errors whose probability is farthest from the truth."""
    rows = rows[_known(y_true[rows], y_prob[rows])]
    errors = rows[(y_prob[rows] >= threshold) != (y_true[rows] >= 0.5)]
    return errors[np.argsort(-np.abs(y_prob[errors] - y_true[errors]), kind="stable")][:k]


def errors_per_group(
    y_true: np.ndarray, y_prob: np.ndarray, groups: pd.Series, k: int, threshold: float
) -> dict[str, np.ndarray]:
    """Per group (in order): the row indices of its k most confident errors."""
    values = groups.astype(str).to_numpy()
    return {
        g: confident_errors(y_true, y_prob, np.flatnonzero(values == g), k, threshold) for g in _ordered_groups(groups)
    }


def calibration_tables(
    y_true: np.ndarray, probs: Mapping[str, np.ndarray], labels: Sequence[str]
) -> tuple[pd.DataFrame, dict[str, dict[str, pd.DataFrame]]]:
    """(model, label) -> ECE and Brier score on the known truths, and model -> label -> reliability curve."""
    curves: dict[str, dict[str, pd.DataFrame]] = {}
    records = []
    for m, p in probs.items():
        curves[m] = {}
        for j, label in enumerate(labels):
            mask = _known(y_true[:, j], p[:, j])
            curves[m][label], ece = calibration_curve(y_true[mask, j], p[mask, j])
            records.append(
                {"model": m, "label": label, "ece": ece, "brier": float(np.mean((p[mask, j] - y_true[mask, j]) ** 2))}
            )
    return pd.DataFrame(records).set_index(["model", "label"]), curves


def prediction_table(
    population: Population, labels: Sequence[str], probs: Mapping[str, np.ndarray], face_status: pd.Series
) -> pd.DataFrame:
    """One row per photo: truth, groups, face status and every model's probability of every label."""
    rows = population.rows
    predictions = pd.concat(
        [
            rows[["image_id"]],
            face_status.rename("face").set_axis(rows.index),
            rows[list(labels)],
            rows[[f"group:{g}" for g in population.groups]],
        ],
        axis=1,
    )
    for m, p in probs.items():
        for j, label in enumerate(labels):
            predictions[f"{m}:{label}_prob"] = p[:, j]
    return predictions


# --------------------------------------------------------------------------- everything


def compute(
    population: Population,
    labels: Sequence[str],
    probs: Mapping[str, np.ndarray],
    face_status: pd.Series,
    notes: Sequence[str] = (),
    threshold: float = 0.5,
    min_slice: int = 20,
    balance_tolerance: float = 0.02,
) -> Analysis:
    """Every table of the report from the truths, groups and each model's probabilities (NaN: no face scored)."""
    rows, labels = population.rows, tuple(labels)
    y_true = rows[list(labels)].to_numpy(float)
    groups = group_metrics(population, labels, probs, face_status, threshold, min_slice)
    metrics = {m: per_label_metrics(y_true, p, labels, threshold) for m, p in probs.items()}
    confusion = {m: confusion_table(rows, y_true, p, labels, SPLIT_BY, threshold) for m, p in probs.items()}
    calibration, curves = calibration_tables(y_true, probs, labels)
    balance = {
        label: (g, group_values(population, g).astype(str).to_numpy())
        for label in labels
        for g in [balancing_grouping(label, population.groups)]
    }
    thresholds = pd.concat(
        {m: balancing_thresholds(y_true, p, labels, balance, threshold, balance_tolerance) for m, p in probs.items()},
        names=["model"],
    )
    curves_by_threshold = {
        m: {label: threshold_curves(y_true[:, j], p[:, j], balance[label][1]) for j, label in enumerate(labels)}
        for m, p in probs.items()
    }
    pairs = population.celeba_pairs
    summary_grouping = f"{pairs[0][0]} x {pairs[0][1]}" if pairs else population.groups[0]
    deltas = delta_table(
        {
            m: summary(groups[groups["model"] == m], metrics[m], calibration.loc[m], labels, summary_grouping)
            for m in probs
        }
    )
    cohorts = {
        pair: {m: cohort_accuracy(rows, y_true, p, labels, pair, threshold) for m, p in probs.items()} for pair in pairs
    }
    train = population.train
    distribution = (
        {pair: train_distribution(train, pair, labels) for pair in pairs} if train is not None and len(train) else {}
    )
    facts = (findings(cohorts[pairs[0]], confusion, labels) if pairs else []) + group_findings(groups, min_slice)
    return Analysis(
        labels=labels,
        models=list(probs),
        notes=list(notes),
        source=population.source,
        derivations={label: population.derivations.get(label, "?") for label in labels},
        threshold=threshold,
        min_slice=min_slice,
        summary_grouping=summary_grouping,
        faces=face_counts(population, face_status),
        skipped=population.skipped,
        groups=groups,
        metrics=metrics,
        confusion=confusion,
        calibration=calibration,
        curves=curves,
        thresholds=thresholds,
        threshold_curves=curves_by_threshold,
        summary=deltas,
        findings=facts,
        predictions=prediction_table(population, labels, probs, face_status),
        cohorts=cohorts,
        train_distribution=distribution,
    )
