"""Per-group rates of the bias report: Wilson intervals, calibration, and every model x label x group's accuracy,
error rates and face counts. Pure numpy / pandas; `compute` assembles the `Analysis` from these tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from celeba.analysis.population import Population, group_values
from celeba.population import NO_FACE, SEVERAL_FACES, UNREADABLE

ALL = "all"  # the grouping (and group) of every row: the reference line of the group tables
Z95 = NormalDist().inv_cdf(0.975)


def wilson_interval(k: np.ndarray | float, n: np.ndarray | float, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion k/n (NaN where n = 0): honest at small n and near 0 or 1."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def calibration_curve(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 10) -> tuple[pd.DataFrame, float]:
    """Equal-width bins: mean confidence, observed positive rate, count; and the expected calibration error
    (the bins' |confidence - observed| weighted by their share of the samples)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(y_prob, edges[1:-1]), 0, n_bins - 1)
    curve = (
        pd.DataFrame({"bin": bins, "p": y_prob, "y": y_true})
        .groupby("bin")
        .agg(confidence=("p", "mean"), observed=("y", "mean"), n=("y", "size"))
    )
    ece = float((curve["n"] * (curve["confidence"] - curve["observed"]).abs()).sum() / max(len(y_prob), 1))
    return curve, ece


def rate_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """One label on one group: y_true known (0/1), y_prob NaN where no face was scored (an error, kept in n).

    accuracy = correct / n with its Wilson CI; ROC-AUC, FPR, FNR and ECE are over the scored faces.
    """
    scored = ~np.isnan(y_prob)
    positive = y_true >= 0.5
    called = np.nan_to_num(y_prob, nan=-1.0) >= threshold
    correct = int((scored & (called == positive)).sum())
    n = len(y_true)
    low, high = wilson_interval(correct, n)
    ys, cs = positive[scored], called[scored]
    fp, tn = int((~ys & cs).sum()), int((~ys & ~cs).sum())
    fn, tp = int((ys & ~cs).sum()), int((ys & cs).sum())
    both = 0 < ys.sum() < len(ys)
    return {
        "n": n,
        "scored": int(scored.sum()),
        "errors": n - correct,
        "accuracy": correct / n if n else np.nan,
        "ci_low": float(low),
        "ci_high": float(high),
        "roc_auc": float(roc_auc_score(ys, y_prob[scored])) if both else np.nan,
        "fpr": fp / (fp + tn) if fp + tn else np.nan,
        "fnr": fn / (fn + tp) if fn + tp else np.nan,
        "ece": calibration_curve(ys.astype(float), y_prob[scored])[1] if scored.any() else np.nan,
    }


def groupings(population: Population) -> list[str]:
    """Every single group column, then every pair 'a x b' of them."""
    return [*population.groups, *(f"{a} x {b}" for a, b in population.pairs)]


def _ordered_groups(values: pd.Series) -> list[str]:
    present = set(values.astype(str))
    if isinstance(values.dtype, pd.CategoricalDtype):
        return [str(c) for c in values.cat.categories if str(c) in present]
    return sorted(present)


def pair_values(population: Population, pair: str) -> pd.Series:
    """Joint groups of a pair, ordered by the first group then the second ('Male & Young', 'Male & Not Young')."""
    a, b = pair.split(" x ", 1)
    first, second = group_values(population, a), group_values(population, b)
    order = [f"{x} & {y}" for x in _ordered_groups(first) for y in _ordered_groups(second)]
    joint = first.astype(str) + " & " + second.astype(str)
    return pd.Series(pd.Categorical(joint, [o for o in order if o in set(joint)], ordered=True), index=joint.index)


def grouping_values(population: Population, grouping: str) -> pd.Series:
    if grouping == ALL:
        return pd.Series(pd.Categorical([ALL] * len(population.rows)), index=population.rows.index)
    return pair_values(population, grouping) if " x " in grouping else group_values(population, grouping)


def group_metrics(
    population: Population,
    labels: Sequence[str],
    probs: Mapping[str, np.ndarray],
    face_status: pd.Series,
    threshold: float = 0.5,
    min_slice: int = 20,
) -> pd.DataFrame:
    """Every model x label x group (each group column, each pair of them, and 'all'): `rate_metrics`, the face
    counts, and `small` (n < min_slice); worst first (lowest accuracy) within each model and label."""
    status = face_status.to_numpy()
    unscored = np.isin(status, (NO_FACE, UNREADABLE))
    several = status == SEVERAL_FACES
    records = []
    for grouping in [ALL, *groupings(population)]:
        values = grouping_values(population, grouping)
        for order, group in enumerate(_ordered_groups(values)):
            in_group = (values.astype(str) == group).to_numpy()
            for model, p in probs.items():
                for j, label in enumerate(labels):
                    y = population.rows[label].to_numpy(float)
                    mask = in_group & ~np.isnan(y)
                    if mask.any():
                        records.append(
                            {
                                "model": model,
                                "label": label,
                                "grouping": grouping,
                                "group": group,
                                "order": order,
                                **rate_metrics(y[mask], p[mask, j], threshold),
                                "no_face": int(unscored[mask].sum()),
                                "several_faces": int(several[mask].sum()),
                            }
                        )
    table = pd.DataFrame(records)
    table["small"] = table["n"] < min_slice
    rank = {"model": {m: i for i, m in enumerate(probs)}, "label": {lab: i for i, lab in enumerate(labels)}}
    table = table.sort_values(
        ["model", "label", "small", "accuracy", "n"],
        ascending=[True, True, True, True, False],
        key=lambda s: s.map(rank[s.name]) if s.name in rank else s,
        kind="stable",
    )
    return table.reset_index(drop=True)


def worst_groups(table: pd.DataFrame, top: int = 8) -> pd.DataFrame:
    """The `top` least accurate groups of at least --min-slice photos per model and label (table is sorted)."""
    big = table[~table["small"] & (table["grouping"] != ALL)]
    return big.groupby(["model", "label"], sort=False).head(top).reset_index(drop=True)


def face_counts(population: Population, face_status: pd.Series) -> pd.DataFrame:
    """Photos per face status, overall and in every group of every single group column."""
    parts = []
    for grouping in [ALL, *population.groups]:
        values = grouping_values(population, grouping).astype(str)
        counts = pd.crosstab(
            [pd.Series(grouping, index=values.index, name="grouping"), values.rename("group")],
            face_status.rename("face").set_axis(values.index),
        )
        counts.insert(0, "photos", counts.sum(axis=1))
        parts.append(counts.reindex(_ordered_groups(grouping_values(population, grouping)), level="group"))
    return pd.concat(parts).fillna(0).astype(int)
