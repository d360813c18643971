"""`celeba analyze`: where do the models fail? The bias report of one or more saved models side by side, on a CelebA
partition or on any labelled folder of photos (`--images`). The work is in `celeba.analysis`; the CLI layer prints."""

from __future__ import annotations

from typing import Any

from celeba.analysis.options import AnalyzeConfig
from celeba.analysis.tables import markdown_table

__all__ = ["AnalyzeConfig", "analyze", "markdown_table"]


def analyze(cfg: AnalyzeConfig) -> dict[str, Any]:
    """Run the analysis (`celeba.analysis.run`); the headline results as a dict for the command line."""
    from celeba.analysis import run

    result = run(cfg)
    a = result.analysis
    return {
        "report": result.report,
        "out": result.out,
        "labels": a.labels,
        "models": a.models,
        "figures": result.figures,
        "summary": a.summary,
        "findings": a.findings,
        "groups": a.groups,
        "cohorts": a.cohorts,
        "thresholds": a.thresholds,
        "analysis": a,
    }
