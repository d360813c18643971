"""Groups from any columns, and the per-group table every report prints (fairlearn's MetricFrame)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from celeba.data import CelebADataError
from celeba.groups import auc_within, group_of, group_report, parse_groups


def test_group_specs_parse_and_bad_ones_are_clear():
    assert parse_groups("Male,Young") == ("Male", "Young")
    assert parse_groups(["race", "gender"]) == ("race", "gender")
    assert parse_groups(["race,gender"]) == ("race", "gender")
    for bad, message in (("Male,,Young", "separated by commas"), ("Male,Male", "more than once"), ("", "commas")):
        with pytest.raises(CelebADataError, match=message):
            parse_groups(bad)


def test_groups_from_labels_and_from_folder_columns():
    frame = pd.DataFrame({"Male": [1.0, 0.0, np.nan], "group:race": ["Asian", "White", None]})
    assert list(group_of(frame, ["Male", "race"])) == [
        "Male=1 & race=Asian",
        "Male=0 & race=White",
        "Male=unknown & race=unknown",
    ]
    with pytest.raises(CelebADataError, match="no column 'skin'.*Male, race"):
        group_of(frame, ["skin"])


def test_report_gives_worst_balanced_rates_and_intervals():
    groups = pd.Series(["a"] * 80 + ["b"] * 20)
    y = np.array([1, 0] * 40 + [1] * 10 + [0] * 10, float)
    p = y.copy()
    p[80:90] = 0.0  # group b: every positive missed -> accuracy 0.5, TPR 0
    y[0] = np.nan  # unknown truth: left out
    report = group_report("Male", y, p, groups)
    table = report.table
    assert report.worst_group == "b" and report.worst == pytest.approx(0.5)
    assert table.loc["a", "n"] == 79 and table.loc["a", "accuracy"] == 1.0
    assert report.balanced == pytest.approx(0.75) and report.average == pytest.approx((79 + 10) / 99)
    assert table.loc["b", "tpr"] == 0.0 and table.loc["b", "fpr"] == 0.0
    assert table.loc["b", "low"] < 0.5 < table.loc["b", "high"]  # a bootstrap interval around it


def test_auc_within_ranks_inside_each_group_not_across_them():
    """Young perfectly ranked among men, reversed among women: the pooled AUC would hide the women's 0.0;
    a group with one class only has no AUC."""
    groups = pd.Series(["men"] * 4 + ["women"] * 4 + ["kids"] * 2)
    y = np.array([0, 0, 1, 1, 0, 0, 1, 1, 1, np.nan])
    p = np.array([0.1, 0.2, 0.8, 0.9, 0.9, 0.8, 0.2, 0.1, 0.5, 0.5])
    aucs = auc_within(y, p, groups)
    assert aucs["men"] == 1.0
    assert aucs["women"] == 0.0
    assert np.isnan(aucs["kids"])
