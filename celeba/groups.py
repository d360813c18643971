"""Groups as configuration, and disaggregated metrics per group (fairlearn's MetricFrame).

A group is a combination of values of some columns: CelebA labels (`Male,Young` -> 4 groups) or a photo
folder's own columns (`race,gender` -> 10 groups, `age_band`). One implementation serves train (Group DRO's
groups come from labels), repair (DFR balances on them) and the tables every report prints: per group n,
accuracy with a bootstrap 95% interval, TPR and FPR; overall the average, the worst group and the
group-balanced accuracy (the mean of the groups' accuracies).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from celeba.data import CelebADataError

#: Bootstrap resamples for the intervals: enough for a stable 2.5%/97.5% quantile, cheap on 2k rows.
N_BOOT = 200


def parse_groups(spec: str | Sequence[str]) -> tuple[str, ...]:
    """'Male,Young' or ['race', 'gender'] -> column names; empty, blank or repeated names are clear errors."""
    names = [s.strip() for part in ([spec] if isinstance(spec, str) else spec) for s in str(part).split(",")]
    if not names or any(not n for n in names):
        raise CelebADataError(f"--groups: {spec!r}: give column names separated by commas, e.g. Male,Young")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise CelebADataError(f"--groups: {', '.join(repeated)} given more than once")
    return tuple(names)


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    for key in (name, f"group:{name}"):
        if key in frame.columns:
            return frame[key]
    known = sorted(c.removeprefix("group:") for c in frame.columns if c not in ("path", "image_id", "source"))
    raise CelebADataError(f"--groups: no column {name!r} in this data (columns: {', '.join(known)})")


def group_of(frame: pd.DataFrame, names: Sequence[str]) -> pd.Series:
    """Every row's group, e.g. 'Male=1 & Young=0' or 'race=Asian & gender=male'; unknown values read 'unknown'."""
    parts = []
    for name in names:
        values = _column(frame, name)
        if pd.api.types.is_numeric_dtype(values):
            text = values.map(lambda v: "unknown" if pd.isna(v) else f"{v:g}")
        else:
            text = values.astype(str).where(values.notna(), "unknown")
        parts.append(name + "=" + text.astype(str))
    out = parts[0]
    for part in parts[1:]:
        out = out + " & " + part
    return out.rename("group").reset_index(drop=True)


def _rate(y_true: np.ndarray, y_pred: np.ndarray, positive: int) -> float:
    rows = y_true == positive
    return float((y_pred[rows] == 1).mean()) if rows.any() else float("nan")


def _tpr(y_true: Any, y_pred: Any) -> float:
    return _rate(np.asarray(y_true), np.asarray(y_pred), 1)


def _fpr(y_true: Any, y_pred: Any) -> float:
    return _rate(np.asarray(y_true), np.asarray(y_pred), 0)


def _accuracy(y_true: Any, y_pred: Any) -> float:
    return float((np.asarray(y_true) == np.asarray(y_pred)).mean()) if len(y_true) else float("nan")


def _count(y_true: Any, y_pred: Any) -> int:
    return len(y_true)


@dataclass(frozen=True)
class GroupReport:
    """One label's accuracy per group and its summary."""

    label: str
    table: pd.DataFrame  # index: group; n, accuracy, low, high (bootstrap 95%), tpr, fpr
    average: float
    worst: float
    worst_group: str
    balanced: float

    def summary(self) -> dict[str, float | str | int]:
        return {
            "label": self.label,
            "n": int(self.table["n"].sum()),
            "average": self.average,
            "worst": self.worst,
            "worst_group": self.worst_group,
            "balanced": self.balanced,
        }


def worst_and_balanced(accuracy: pd.Series) -> tuple[float, str, float]:
    """Per-group accuracies (index: group) -> the worst group's accuracy and name, and the group-balanced accuracy
    (their mean, so a small group counts as much as a large one). Groups without a row (NaN) are left out.

    The one definition behind every table: repair's and the study's reports and analyze's summary."""
    known = accuracy.dropna()
    if known.empty:
        raise CelebADataError("no group with a known truth")
    return float(known.min()), str(known.idxmin()), float(known.mean())


def auc_within(y_true: np.ndarray, y_prob: np.ndarray, groups: pd.Series) -> dict[str, float]:
    """ROC-AUC of one label inside each group (e.g. Young within each sex), rows with unknown truth left out.

    Threshold-free: it says whether the features separate the label inside a group at all, which no threshold or
    last-layer refit can raise. NaN for a group that holds one class only.
    """
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true, np.float64)
    known = np.isfinite(y_true)
    t, p, g = y_true[known] >= 0.5, np.asarray(y_prob)[known], np.asarray(groups)[known]
    out = {}
    for group in sorted(set(g)):
        rows = g == group
        out[str(group)] = float(roc_auc_score(t[rows], p[rows])) if len(set(t[rows])) == 2 else float("nan")
    return out


def group_report(
    label: str, y_true: np.ndarray, y_prob: np.ndarray, groups: pd.Series, threshold: float = 0.5, seed: int = 0
) -> GroupReport:
    """Per-group metrics of one label through fairlearn's MetricFrame; rows with unknown truth are left out.

    The worst group is the lowest accuracy among groups with any row; group-balanced accuracy weighs every
    group equally, so a small group counts as much as a large one.
    """
    from fairlearn.metrics import MetricFrame

    y_true = np.asarray(y_true, np.float64)
    known = np.isfinite(y_true)
    t = y_true[known].astype(int)
    p = (np.asarray(y_prob)[known] >= threshold).astype(int)
    g = np.asarray(groups)[known]
    if not len(t):
        raise CelebADataError(f"{label}: no row with a known truth")
    metrics = {"n": _count, "accuracy": _accuracy, "tpr": _tpr, "fpr": _fpr}
    frame = MetricFrame(metrics=metrics, y_true=t, y_pred=p, sensitive_features=pd.Series(g, name="group"))
    table = frame.by_group.astype(float)
    table["n"] = table["n"].astype(int)
    boot = MetricFrame(
        metrics={"accuracy": _accuracy},
        y_true=t,
        y_pred=p,
        sensitive_features=pd.Series(g, name="group"),
        n_boot=N_BOOT,
        ci_quantiles=[0.025, 0.975],
        random_state=seed,
    )
    low, high = boot.by_group_ci
    table.insert(2, "low", low["accuracy"].astype(float))
    table.insert(3, "high", high["accuracy"].astype(float))
    table = table.sort_values("accuracy")
    worst, worst_group, balanced = worst_and_balanced(table["accuracy"])
    return GroupReport(
        label=label,
        table=table,
        average=float((t == p).mean()),
        worst=worst,
        worst_group=worst_group,
        balanced=balanced,
    )
