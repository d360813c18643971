"""Evaluation of a saved model on one partition: per-label metrics and accuracy per cohort."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from celeba.analysis.compute import compute
from celeba.analysis.population import folder_population
from celeba.analysis.scoring import run_models
from celeba.config import EvalConfig
from celeba.data import (
    CelebADataError,
    find_bad_images,
    is_records,
    labels_array,
    load_index,
    split,
)
from celeba.metrics import cohort_accuracy, label_metrics
from celeba.model import dataset_probabilities, flip_averaged, load_model, model_image_size

log = logging.getLogger(__name__)

__all__ = ["Evaluation", "dataset_probabilities", "evaluate", "write_evaluation"]


def readable_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows whose image decodes; each one that does not is logged and skipped. Only the rows to be scored are
    decoded (a partition, or its first --limit images), not every image of the folder. A prepared folder's rows
    name TFRecord shards, not images: `prepare` checked its images when it wrote them."""
    if is_records(rows["path"].tolist()):
        return rows
    problems = find_bad_images(rows["path"].tolist())
    for path, problem in problems.items():
        log.warning("skipping %s: %s", path, problem)
    if problems:
        log.warning("%d unreadable images skipped", len(problems))
    return rows[~rows["path"].isin(problems)].reset_index(drop=True)


@dataclass
class Evaluation:
    """What `evaluate` found, before anything is written: the numbers of metrics.json and the tables of the CSVs.

    A CelebA partition fills `partition` and `cohorts` (accuracy per 2x2 cohort); a folder of photos (`--images`)
    fills `images`, `derivations`, `faces`, `skipped` and `groups` (accuracy per group with Wilson intervals).
    """

    model: str
    n: int
    threshold: float
    metrics: pd.DataFrame  # one row per label: accuracy, ROC-AUC, ...
    table: pd.DataFrame  # what the CLI prints under the metrics: cohorts, or groups worst first
    predictions: pd.DataFrame
    partition: str | None = None
    tta: bool = False
    images: str | None = None
    source: str = ""  # how a folder is named in print: "<folder> with <csv> (N photos)"
    derivations: dict[str, str] = field(default_factory=dict)
    faces: pd.DataFrame | None = None  # photos per face status (folder)
    groups: pd.DataFrame | None = None  # every group row, for groups.csv (folder)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def folder(self) -> bool:
        return self.images is not None

    @property
    def labels(self) -> dict[str, dict[str, Any]]:
        return dict(json.loads(self.metrics.to_json(orient="index")))

    def summary(self) -> dict[str, Any]:
        """metrics.json's content."""
        head: dict[str, Any] = {"model": self.model}
        if self.folder:
            assert self.faces is not None
            return head | {
                "images": self.images,
                "n": self.n,
                "threshold": self.threshold,
                "derivations": self.derivations,
                "faces": json.loads(self.faces.loc[("all", "all")].to_json()),
                "labels": self.labels,
                "skipped": self.skipped,
            }
        return head | {
            "partition": self.partition,
            "n": self.n,
            "threshold": self.threshold,
            "tta": self.tta,
            "labels": self.labels,
            "cohorts": json.loads(self.table.to_json(orient="index")),
        }


def default_out(cfg: EvalConfig) -> Path:
    """reports/<model>-<partition>/ or reports/<model>-<folder>/."""
    where = Path(cfg.images).name if cfg.images is not None else cfg.partition
    return cfg.out or Path("reports") / f"{Path(cfg.model).stem}-{where}"


def write_evaluation(result: Evaluation, out: Path) -> list[Path]:
    """metrics.json, metrics.csv, predictions.csv and cohorts.csv (a partition) or groups.csv and faces.csv (a folder)
    in `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    result.metrics.to_csv(out / "metrics.csv")
    written = [out / "metrics.json", out / "metrics.csv"]
    if result.folder:
        assert result.groups is not None and result.faces is not None
        result.groups.to_csv(out / "groups.csv", index=False)
        result.faces.to_csv(out / "faces.csv")
        written += [out / "groups.csv", out / "faces.csv"]
    else:
        result.table.to_csv(out / "cohorts.csv")
        written.append(out / "cohorts.csv")
    result.predictions.to_csv(out / "predictions.csv", index=False)
    (out / "metrics.json").write_text(json.dumps(result.summary(), indent=2))
    return written + [out / "predictions.csv"]


def evaluate(cfg: EvalConfig) -> Evaluation:
    """Per-label metrics and accuracy per cohort of a model on a partition (or per group on a folder of photos);
    nothing is written (`write_evaluation` does)."""
    if cfg.images is not None:
        return evaluate_folder(cfg, cfg.images)
    model, labels = load_model(cfg.model)
    if cfg.tta:
        model = flip_averaged(model)
    rows = split(load_index(cfg.data_dir), cfg.partition, cfg.limit)
    if cfg.check_images:
        rows = readable_rows(rows)
    if rows.empty:
        raise CelebADataError(f"{cfg.data_dir}: no {cfg.partition} images")
    probs = dataset_probabilities(model, rows, labels, model_image_size(model), cfg.batch_size)
    y_true = labels_array(rows, labels)
    predictions = rows[["image_id", "partition"]].copy()
    for j, label in enumerate(labels):
        predictions[f"{label}_true"] = y_true[:, j].astype(int)
        predictions[f"{label}_prob"] = probs[:, j]
    return Evaluation(
        model=str(cfg.model),
        n=len(rows),
        threshold=cfg.threshold,
        metrics=label_metrics(y_true, probs, labels, cfg.threshold),
        table=cohort_accuracy(rows, y_true, probs, labels, threshold=cfg.threshold),
        predictions=predictions,
        partition=cfg.partition,
        tta=cfg.tta,
    )


def evaluate_folder(cfg: EvalConfig, images: Path) -> Evaluation:
    """A labelled folder of photos (`--images`): per-label metrics and per-group accuracy with Wilson intervals."""
    population = folder_population(
        images, cfg.labels_csv, cfg.filename_pattern, cfg.derive, cfg.map, cfg.bins, cfg.limit, cfg.age_bands
    )
    runs, labels, status = run_models([cfg.model], population.rows, population.detect, cfg.batch_size)
    analysis = compute(
        population, labels, {runs[0].name: runs[0].probs}, status, [runs[0].note], cfg.threshold, cfg.min_slice
    )
    groups = analysis.groups.drop(columns=["model", "order"])
    columns = ["label", "grouping", "group", "n", "accuracy", "ci_low", "ci_high", "no_face", "small"]
    return Evaluation(
        model=str(cfg.model),
        n=len(population.rows),
        threshold=cfg.threshold,
        metrics=analysis.metrics[runs[0].name],
        table=groups[groups["grouping"] != "all"][columns].set_index(["label", "grouping", "group"]),
        predictions=analysis.predictions,
        images=str(cfg.images),
        source=population.source,
        derivations=dict(analysis.derivations),
        faces=analysis.faces,
        groups=groups,
        skipped=analysis.skipped.to_dict(orient="records"),
    )
