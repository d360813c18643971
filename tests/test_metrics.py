"""Per-label, per-cohort and per-sample metrics against direct computations."""

from __future__ import annotations

import numpy as np
import pandas as pd

from celeba.metrics import cohort_accuracy, cohort_names, label_metrics, sample_confusion

rng = np.random.default_rng(0)
Y = rng.integers(0, 2, (200, 2)).astype(np.float32)
P = np.clip(Y * 0.6 + rng.random((200, 2)) * 0.5, 0, 1)


def test_label_metrics_counts_and_ratios():
    table = label_metrics(Y, P, ["Male", "Young"])
    pred = P >= 0.5
    for j, label in enumerate(["Male", "Young"]):
        t = Y[:, j] == 1
        tp, tn = int((t & pred[:, j]).sum()), int((~t & ~pred[:, j]).sum())
        fp, fn = int((~t & pred[:, j]).sum()), int((t & ~pred[:, j]).sum())
        row = table.loc[label]
        assert (row.tp, row.tn, row.fp, row.fn) == (tp, tn, fp, fn)
        assert np.isclose(row.accuracy, (tp + tn) / 200)
        assert np.isclose(row.precision, tp / (tp + fp)) and np.isclose(row.recall, tp / (tp + fn))
        assert 0.5 < row.roc_auc <= 1.0


def test_cohort_accuracy_matches_groupby():
    frame = pd.DataFrame({"Male": Y[:, 0].astype(int), "Young": Y[:, 1].astype(int)})
    table = cohort_accuracy(frame, Y, P, ["Male", "Young"])
    assert table["n"].sum() == 200 and len(table) == 4
    mask = (frame.Male == 0) & (frame.Young == 1)
    expected = ((P[mask.to_numpy(), 1] >= 0.5) == (Y[mask.to_numpy(), 1] == 1)).mean()
    assert np.isclose(table.loc["Not Male & Young", "Young_accuracy"], expected)
    assert set(cohort_names(frame)) == {"Male & Young", "Male & Not Young", "Not Male & Young", "Not Male & Not Young"}


def test_sample_confusion_is_one_hot_per_element():
    parts = sample_confusion(Y, P)
    total = parts["tp"] + parts["tn"] + parts["fp"] + parts["fn"]
    np.testing.assert_array_equal(total, np.ones_like(Y))
    np.testing.assert_array_equal(parts["accuracy"], parts["tp"] + parts["tn"])


def test_cohort_names_say_which_attribute_is_one():
    """Each row's name is read off its own 0/1 values (a name per row, in order), and cohort_accuracy's rows agree:
    the 'Male & Not Young' cohort holds exactly the rows with Male == 1 and Young == 0."""
    frame = pd.DataFrame({"Male": [1, 0, 1, 0, 1], "Young": [1, 1, 0, 0, 0]})
    assert cohort_names(frame).tolist() == [
        "Male & Young",
        "Not Male & Young",
        "Male & Not Young",
        "Not Male & Not Young",
        "Male & Not Young",
    ]
    y = frame.to_numpy(np.float32)
    table = cohort_accuracy(frame, y, y, ["Male", "Young"])
    assert table.loc["Male & Not Young", "n"] == 2 and table.loc["Not Male & Young", "n"] == 1
