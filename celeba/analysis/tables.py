"""The report's tables on disk (CSV) and as GitHub Markdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from celeba.analysis.compute import Analysis

GROUP_COLUMNS = [
    "model",
    "label",
    "grouping",
    "group",
    "n",
    "accuracy",
    "ci_low",
    "ci_high",
    "errors",
    "no_face",
    "several_faces",
    "roc_auc",
    "fpr",
    "fnr",
    "ece",
]


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs the optional tabulate package)."""
    frame = frame.reset_index() if frame.index.name or any(frame.index.names) else frame

    def cell(value: Any) -> str:
        if isinstance(value, (float, np.floating)):
            return "" if np.isnan(value) else f"{value:.{digits}f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def pair_label(pair: tuple[str, str]) -> str:
    return f"{pair[0]} x {pair[1]}"


def write_tables(analysis: Analysis, out: Path) -> list[Path]:
    """Every table as CSV under `out`; returns the paths."""
    a = analysis
    tables: dict[str, pd.DataFrame] = {
        "groups.csv": a.groups,  # `order`: the group's place in its column (bins low to high)
        "worst_groups.csv": a.worst()[GROUP_COLUMNS],
        "faces.csv": a.faces,
        "metrics.csv": pd.concat(a.metrics, names=["model"]),
        "confusion.csv": pd.concat(a.confusion, names=["model"]),
        "calibration.csv": a.calibration,
        "thresholds.csv": a.thresholds,
        "summary.csv": a.summary,
        "predictions.csv": a.predictions,
    }
    if len(a.skipped):
        tables["skipped.csv"] = a.skipped
    if a.cohorts:
        tables["cohorts.csv"] = pd.concat(
            {pair_label(p): pd.concat(t, names=["model"]) for p, t in a.cohorts.items()}, names=["pair"]
        )
    if a.train_distribution:
        tables["train_distribution.csv"] = pd.concat(
            {pair_label(p): t for p, t in a.train_distribution.items()}, names=["pair"]
        )
    paths = []
    for name, table in tables.items():
        keep_index = bool(table.index.name or any(table.index.names))
        table.to_csv(out / name, index=keep_index)
        paths.append(out / name)
    return paths
