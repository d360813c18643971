"""Evaluation of a saved model on one partition: per-label metrics and accuracy per cohort."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from celeba.config import EvalConfig
from celeba.data import (
    CelebADataError,
    find_bad_images,
    is_records,
    labels_array,
    load_index,
    make_dataset,
    split,
)
from celeba.metrics import cohort_accuracy, label_metrics
from celeba.model import flip_averaged, load_model, model_image_size
from celeba.runtime import keras_verbose

log = logging.getLogger(__name__)


def dataset_probabilities(
    model: keras.Model, rows: pd.DataFrame, labels: Sequence[str], image_size: int, batch_size: int = 64
) -> np.ndarray:
    """Probabilities of index rows (CelebA-style aligned images) through the tf.data pipeline, in order."""
    ds = make_dataset(rows, labels, image_size, batch_size, training=False)
    return model.predict(ds, verbose=keras_verbose())


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


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Write metrics.json, metrics.csv, cohorts.csv and predictions.csv; return metrics.json's content plus the
    tables (`metrics_table`, `cohorts_table`) and the `out` folder, for the CLI to print."""
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
    metrics = label_metrics(y_true, probs, labels, cfg.threshold)
    cohorts = cohort_accuracy(rows, y_true, probs, labels, threshold=cfg.threshold)

    out = cfg.out or Path("reports") / f"{Path(cfg.model).stem}-{cfg.partition}"
    out.mkdir(parents=True, exist_ok=True)
    metrics.to_csv(out / "metrics.csv")
    cohorts.to_csv(out / "cohorts.csv")
    predictions = rows[["image_id", "partition"]].copy()
    for j, label in enumerate(labels):
        predictions[f"{label}_true"] = y_true[:, j].astype(int)
        predictions[f"{label}_prob"] = probs[:, j]
    predictions.to_csv(out / "predictions.csv", index=False)
    result = {
        "model": str(cfg.model),
        "partition": cfg.partition,
        "n": len(rows),
        "threshold": cfg.threshold,
        "tta": cfg.tta,
        "labels": json.loads(metrics.to_json(orient="index")),
        "cohorts": json.loads(cohorts.to_json(orient="index")),
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    return result | {"out": out, "metrics_table": metrics, "cohorts_table": cohorts}


def evaluate_folder(cfg: EvalConfig, images: Path) -> dict[str, Any]:
    """A labelled folder of photos (`--images`): per-label metrics and per-group accuracy with Wilson intervals;
    writes metrics.json, metrics.csv, groups.csv, faces.csv and predictions.csv."""
    from celeba.analysis.compute import compute
    from celeba.analysis.population import folder_population
    from celeba.analysis.scoring import run_models

    population = folder_population(
        images, cfg.labels_csv, cfg.filename_pattern, cfg.derive, cfg.map, cfg.bins, cfg.limit, cfg.age_bands
    )
    runs, labels, status = run_models([cfg.model], population.rows, population.detect, cfg.batch_size)
    analysis = compute(
        population, labels, {runs[0].name: runs[0].probs}, status, [runs[0].note], cfg.threshold, cfg.min_slice
    )
    out = cfg.out or Path("reports") / f"{Path(cfg.model).stem}-{Path(images).name}"
    out.mkdir(parents=True, exist_ok=True)
    metrics = analysis.metrics[runs[0].name]
    groups = analysis.groups.drop(columns=["model", "order"])
    metrics.to_csv(out / "metrics.csv")
    groups.to_csv(out / "groups.csv", index=False)
    analysis.faces.to_csv(out / "faces.csv")
    analysis.predictions.to_csv(out / "predictions.csv", index=False)
    result = {
        "model": str(cfg.model),
        "images": str(cfg.images),
        "n": len(population.rows),
        "threshold": cfg.threshold,
        "derivations": analysis.derivations,
        "faces": json.loads(analysis.faces.loc[("all", "all")].to_json()),
        "labels": json.loads(metrics.to_json(orient="index")),
        "skipped": analysis.skipped.to_dict(orient="records"),
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2))

    columns = ["label", "grouping", "group", "n", "accuracy", "ci_low", "ci_high", "no_face", "small"]
    table = groups[groups["grouping"] != "all"][columns].set_index(["label", "grouping", "group"])
    return result | {"out": out, "metrics_table": metrics, "cohorts_table": table, "source": population.source}
