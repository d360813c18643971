"""The report's figures: an `Analysis` (and, for latent space and Grad-CAM, the models) -> PNGs via `celeba.plots`."""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from celeba.analysis.compute import STATS, Analysis, errors_per_group, saliency_picks
from celeba.analysis.population import Population
from celeba.analysis.rates import ALL, grouping_values
from celeba.analysis.scoring import ModelRun, model_input
from celeba.data import CelebADataError

log = logging.getLogger(__name__)

PROJECTIONS = ("pca", "tsne", "umap")
LATENT_GROUPINGS = 4  # at most this many group columns colour the latent space


def available_projections(requested: Sequence[str]) -> list[str]:
    """The requested projections that can run: UMAP only when umap-learn is installed (an optional package)."""
    unknown = [p for p in requested if p not in PROJECTIONS]
    if unknown:
        raise CelebADataError(f"--projections: unknown {unknown}; choose from {PROJECTIONS}")
    return [p for p in requested if p != "umap" or umap_installed()]


@functools.cache
def umap_installed() -> bool:
    """Whether umap-learn can be imported; its absence is said once per process, at debug level (it is optional)."""
    found = importlib.util.find_spec("umap") is not None
    if not found:
        log.debug("umap-learn is not installed: no UMAP projection (pip install umap-learn adds it)")
    return found


def project(embeddings: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """2-D projection; t-SNE and UMAP start from 50 PCA components (faster, less noise)."""
    from sklearn.decomposition import PCA

    if method == "pca" or len(embeddings) < 4:
        return PCA(2, random_state=seed).fit_transform(embeddings)
    reduced = PCA(min(50, *embeddings.shape), random_state=seed).fit_transform(embeddings)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(reduced) - 1) / 3)  # t-SNE needs perplexity < n
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)
    import umap  # optional: only when installed

    return umap.UMAP(n_components=2, random_state=seed).fit_transform(reduced)


def _overlays(
    run: ModelRun, population: Population, idx: np.ndarray, j: int, towards: np.ndarray, grad_model: Any
) -> np.ndarray:
    from celeba.saliency import gradcam, overlay

    paths = population.rows["path"].to_numpy()
    images = np.stack([model_input(paths[i], population.detect, run.image_size) for i in idx])
    cams = gradcam(run.model, images, run.label_index[j], towards, grad_model)
    return np.stack([overlay(im, cam) for im, cam in zip(images, cams)])


def saliency_rows(
    run: ModelRun, population: Population, y_true: np.ndarray, label: str, j: int, k: int, threshold: float
) -> list[tuple[str, np.ndarray, list[str]]]:
    """Grad-CAM overlays: what pushes towards the label (top scores), away from it (bottom), and on errors
    (towards the label for false positives, away from it for misses: what drove the wrong answer)."""
    from celeba.saliency import gradcam_model

    grad_model = gradcam_model(run.model)
    picks = saliency_picks(y_true[:, j], run.probs[:, j], k, threshold)
    result: list[tuple[str, np.ndarray, list[str]]] = []
    for kind, title in (
        ("highest", f"towards {label}\n(highest scores)"),
        ("lowest", f"away from {label}\n(lowest scores)"),
        ("errors", "worst errors\n(towards the\nwrong answer)"),
    ):
        idx = picks[kind]
        if len(idx) == 0:
            result.append((title, np.zeros((0, 1, 1, 3), np.uint8), []))
            continue
        towards = run.probs[idx, j] >= threshold if kind == "errors" else np.full(len(idx), kind == "highest")
        captions = [f"p={run.probs[i, j]:.2f} y={int(y_true[i, j])}" for i in idx]
        result.append((title, _overlays(run, population, idx, j, towards, grad_model), captions))
    return result


def group_error_rows(
    run: ModelRun, population: Population, y_true: np.ndarray, j: int, grouping: str, k: int, threshold: float
) -> list[tuple[str, np.ndarray, list[str]]]:
    """Grad-CAM of the k most confident errors in every group of `grouping` (one row per group)."""
    from celeba.saliency import gradcam_model

    grad_model = gradcam_model(run.model)
    picks = errors_per_group(y_true[:, j], run.probs[:, j], grouping_values(population, grouping), k, threshold)
    result: list[tuple[str, np.ndarray, list[str]]] = []
    for group, idx in picks.items():
        title = group.replace(" & ", "\n& ")
        if len(idx) == 0:
            result.append((f"{title}\n(no error)", np.zeros((0, 1, 1, 3), np.uint8), []))
            continue
        captions = [f"p={run.probs[i, j]:.2f} y={int(y_true[i, j])}" for i in idx]
        result.append((title, _overlays(run, population, idx, j, run.probs[idx, j] >= threshold, grad_model), captions))
    return result


def slice_tables(analysis: Analysis) -> dict[str, pd.DataFrame]:
    """Per model, the image-statistic bins in bin order, in the shape `plots.slice_curves` draws."""
    g = analysis.groups[analysis.groups["grouping"].isin(STATS)].sort_values(["grouping", "order"])
    tables = {}
    for model, part in g.groupby("model", sort=False):
        keys = ["grouping", "order", "group"]
        wide = part.pivot_table(index=keys, columns="label", values="accuracy", sort=True)
        wide.insert(0, "n", part.groupby(keys)["n"].max())  # labels unknown for some photos have a smaller n
        wide = wide.reset_index()
        wide.index = wide["grouping"] + " " + wide["group"]
        tables[model] = wide.rename(columns={"grouping": "kind"}).rename(
            columns={label: f"{label}_accuracy" for label in analysis.labels}
        )
    return tables


def draw_figures(
    analysis: Analysis,
    population: Population,
    runs: Sequence[ModelRun],
    out: Path,
    projections: Sequence[str] = ("pca",),
    faces: int = 6,
    seed: int = 0,
) -> dict[str, list[Path]]:
    """Every figure of the report, by section."""
    from celeba import plots

    a, note = analysis, "\n".join(analysis.notes)
    y_true = population.rows[list(a.labels)].to_numpy(float)
    figures: dict[str, list[Path]] = {
        "groups": [
            plots.group_accuracy(
                a.groups[~a.groups["grouping"].str.contains(" x ") & (a.groups["grouping"] != ALL)],
                a.labels,
                out / "groups.png",
                note,
                population.groups,
            )
        ]
    }
    figures["cohorts"] = [
        plots.cohort_heatmaps(a.cohorts[pair], pair, a.labels, out / f"cohorts_{pair[0]}_{pair[1]}.png", note)
        for pair in a.cohorts
    ]
    if a.train_distribution:
        figures["cohorts"].append(
            plots.train_distribution(a.train_distribution, a.labels, out / "train_distribution.png")
        )
    figures["confusion"] = [plots.confusion_grid(a.confusion, out / "confusion.png", note)]
    latent_groups = list(population.groups[:LATENT_GROUPINGS])
    figures["latent"] = []
    for r in runs:
        scored = ~np.isnan(r.embeddings).any(axis=1)
        if scored.sum() < 3:
            continue
        for method in projections:
            log.info("%s: %s projection of %d embeddings", r.name, method, scored.sum())
            points = project(r.embeddings[scored], method, seed)
            figures["latent"].append(
                plots.latent_space(
                    points,
                    np.nan_to_num(y_true[scored]),
                    r.probs[scored] >= a.threshold,
                    a.labels,
                    f"{r.name}: embeddings, {method.upper()}",
                    out / f"latent_{method}_{r.name}.png",
                    r.note,
                )
            )
            figures["latent"].append(
                plots.latent_by_group(
                    points,
                    {g: population.rows[f"group:{g}"].astype(str).to_numpy()[scored] for g in latent_groups},
                    f"{r.name}: embeddings by group, {method.upper()}",
                    out / f"latent_groups_{method}_{r.name}.png",
                    r.note,
                )
            )
    figures["saliency"] = []
    for r in runs:
        for j, label in enumerate(a.labels):
            log.info("%s: Grad-CAM for %s", r.name, label)
            grid = saliency_rows(r, population, y_true, label, j, faces, a.threshold)
            figures["saliency"].append(
                plots.gradcam_grid(
                    grid, f"{r.name}: Grad-CAM for {label}", out / f"gradcam_{label}_{r.name}.png", r.note
                )
            )
            grid = group_error_rows(r, population, y_true, j, a.summary_grouping, faces, a.threshold)
            figures["saliency"].append(
                plots.gradcam_grid(
                    grid,
                    f"{r.name}: most confident {label} errors per {a.summary_grouping} group",
                    out / f"gradcam_errors_{label}_{r.name}.png",
                    r.note,
                )
            )
    slices = slice_tables(a)
    figures["slices"] = [plots.slice_curves(slices, a.labels, STATS, out / "slices.png", note)] if slices else []
    figures["calibration"] = [
        plots.reliability(a.curves, a.calibration, a.labels, out / "reliability.png", note),
        plots.threshold_curves(a.threshold_curves, a.thresholds, out / "thresholds.png", note),
    ]
    return figures
