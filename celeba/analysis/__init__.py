"""The bias analysis, in the order it runs:

- `population`: what is analysed (a CelebA partition, or any labelled folder of photos) -> `Population`;
- `scoring`: every model's probabilities and embeddings, faces prepared like `predict` -> `ModelRun`s;
- `compute`: the numbers, pure pandas -> `Analysis`;
- `tables`, `figures`, `report`: CSVs, PNGs and report.md drawn from the `Analysis`.

`run()` chains them; `celeba.analyze` is the command line around it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from celeba.analysis.compute import STATS, Analysis, compute
from celeba.analysis.options import AnalyzeConfig
from celeba.analysis.population import Population, add_groups, celeba_population, folder_population, quantile_bins
from celeba.data import CelebADataError, check_labels

log = logging.getLogger(__name__)

__all__ = ["Analysis", "Population", "Result", "compute", "run"]


@dataclass
class Result:
    analysis: Analysis
    report: Path
    out: Path
    figures: dict[str, list[Path]]


def parse_pairs(pairs: Sequence[str]) -> list[tuple[str, str]]:
    """'Male,Young' -> ('Male', 'Young'), two different CelebA attributes."""
    result = []
    for pair in pairs:
        parts = tuple(p.strip() for p in pair.split(","))
        if len(parts) != 2 or parts[0] == parts[1]:
            raise CelebADataError(f"--pairs: {pair!r} must be two different attributes like Male,Young")
        a, b = check_labels(parts)
        result.append((a, b))
    return result


def _file_statistics(path: str) -> dict[str, float]:
    from celeba.image_stats import file_statistics

    try:
        return file_statistics(path)
    except ValueError:  # unreadable: its statistics are unknown, the photo stays
        return {}


def image_statistics(paths: Sequence[str]) -> pd.DataFrame:
    """Luminance, contrast, sharpness and file size of every image file (threads: cv2 releases the GIL)."""
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(4) as pool:
        stats = list(
            tqdm(pool.map(_file_statistics, paths), total=len(paths), desc="image statistics", unit="img", leave=False)
        )
    return pd.DataFrame(stats, columns=[*STATS, "contrast", "file_kb"])


def population_for(cfg: AnalyzeConfig) -> Population:
    """A CelebA partition, or the labelled folder of --images."""
    if cfg.images is None:
        if cfg.labels_csv or cfg.filename_pattern or cfg.derive or cfg.map:
            raise CelebADataError("--labels-csv, --filename-pattern, --derive and --map need --images DIR")
        return celeba_population(cfg.data_dir, cfg.partition, cfg.limit, parse_pairs(cfg.pairs), cfg.check_images)
    return folder_population(
        cfg.images, cfg.labels_csv, cfg.filename_pattern, cfg.derive, cfg.map, cfg.bins, cfg.limit, cfg.age_bands
    )


def run(cfg: AnalyzeConfig) -> Result:
    """Compute every table, draw every figure, write report.md and the CSVs under the output folder."""
    from celeba.analysis.figures import available_projections, draw_figures
    from celeba.analysis.report import write_report
    from celeba.analysis.scoring import run_models
    from celeba.analysis.tables import write_tables

    projections = available_projections(cfg.projections)
    population = population_for(cfg)
    default_out = f"audit-{Path(cfg.images).name}" if cfg.images else f"analysis-{cfg.partition}"
    out = Path(cfg.out or Path("reports") / default_out)
    out.mkdir(parents=True, exist_ok=True)

    runs, labels, status = run_models(cfg.model, population.rows, population.detect, cfg.batch_size)
    stats = image_statistics(list(population.rows["path"]))
    population = add_groups(population, {s: quantile_bins(stats[s].astype(float), cfg.bins) for s in STATS})
    analysis = compute(
        population,
        labels,
        {r.name: r.probs for r in runs},
        status,
        [r.note for r in runs],
        cfg.threshold,
        cfg.min_slice,
        cfg.balance_tolerance,
    )
    analysis.predictions = pd.concat([analysis.predictions, stats.set_axis(population.rows.index)], axis=1)
    write_tables(analysis, out)
    figures = draw_figures(analysis, population, runs, out, projections, cfg.faces, cfg.seed)
    report = write_report(analysis, figures, out, cfg.balance_tolerance)
    return Result(analysis, report, out, figures)
