"""Metrics over predictions: per label, per cohort, per sample. Plain numpy/pandas/sklearn, no TensorFlow."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

COHORT_ATTRIBUTES = ("Male", "Young")


def label_metrics(
    y_true: np.ndarray, y_prob: np.ndarray, labels: Sequence[str], threshold: float = 0.5
) -> pd.DataFrame:
    """One row per label: accuracy, precision, recall, F1, ROC-AUC and TP/TN/FP/FN counts (unknown truth, NaN,
    left out of that label's row)."""
    # scikit-learn takes seconds to import: only here, so the per-sample helpers (Tensorleap workers) stay light
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

    y_true = np.asarray(y_true, dtype=np.float64)
    y_prob = np.asarray(y_prob)
    rows = []
    for j, label in enumerate(labels):
        known = np.isfinite(y_true[:, j])  # NaN: a source that does not know this label
        t, s = y_true[known, j].astype(int), y_prob[known, j]
        p = (s >= threshold).astype(int)
        tn, fp, fn, tp = confusion_matrix(t, p, labels=[0, 1]).ravel()
        rows.append(
            {
                "label": label,
                "n": len(t),
                "accuracy": accuracy_score(t, p),
                "precision": precision_score(t, p, zero_division=0.0),
                "recall": recall_score(t, p, zero_division=0.0),
                "f1": f1_score(t, p, zero_division=0.0),
                "roc_auc": roc_auc_score(t, s) if len(np.unique(t)) == 2 else float("nan"),
                "tp": int(tp),
                "tn": int(tn),
                "fp": int(fp),
                "fn": int(fn),
            }
        )
    return pd.DataFrame(rows).set_index("label")


def cohort_names(frame: pd.DataFrame, by: Sequence[str] = COHORT_ATTRIBUTES) -> pd.Series:
    """'Male & Young', 'Not Male & Not Young', ... from 0/1 attribute columns."""
    parts = [np.where(frame[a].to_numpy() == 1, a, f"Not {a}") for a in by]
    return pd.Series([" & ".join(p) for p in zip(*parts)], index=frame.index, name="cohort")


def cohort_accuracy(
    frame: pd.DataFrame,
    y_true: np.ndarray,
    y_prob: np.ndarray,
    labels: Sequence[str],
    by: Sequence[str] = COHORT_ATTRIBUTES,
    threshold: float = 0.5,
) -> pd.DataFrame:
    """Accuracy of every label inside every cohort of `by` (rows: cohorts, with their size)."""
    correct = (np.asarray(y_prob) >= threshold) == (np.asarray(y_true) >= 0.5)
    table = pd.DataFrame(correct.astype(float), columns=[f"{label}_accuracy" for label in labels])
    table["cohort"] = cohort_names(frame.reset_index(drop=True), by).to_numpy()
    grouped = table.groupby("cohort")
    result = grouped.mean()
    result.insert(0, "n", grouped.size())
    return result


def sample_confusion(y_true: np.ndarray, y_prob: np.ndarray, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Per sample and label: 1.0 where the sample is a TP (TN, FP, FN), for per-sample dashboards."""
    t = np.asarray(y_true) >= 0.5
    p = np.asarray(y_prob) >= threshold
    return {
        "tp": (t & p).astype(np.float32),
        "tn": (~t & ~p).astype(np.float32),
        "fp": (~t & p).astype(np.float32),
        "fn": (t & ~p).astype(np.float32),
        "accuracy": (t == p).astype(np.float32),
    }
