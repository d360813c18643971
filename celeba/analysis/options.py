"""`celeba analyze`'s options: in the analysis package, so the analysis needs nothing from the command above it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from celeba.config import DEFAULT_MODEL, PhotoFolderOptions, opt
from celeba.data import SAMPLE_DIR


@dataclass
class AnalyzeConfig(PhotoFolderOptions):
    """Bias analysis of saved models on one CelebA partition. Repeat --model to compare models side by side."""

    model: tuple[Path, ...] = opt(
        (DEFAULT_MODEL,),
        "saved .keras models (run cards beside them); repeat --model or "
        "list several; the first is the reference of the deltas",
    )
    data_dir: Path = opt(SAMPLE_DIR, "a CelebA folder (official or Kaggle layout)")
    partition: Literal["train", "validation", "test"] = opt("test", "which official partition to analyse")
    out: Path | None = opt(
        None,
        "folder for report.md, the figures and the CSVs",
        none="reports/analysis-<partition>/ or reports/audit-<folder>/",
    )
    limit: int | None = opt(None, "only the first N images of the partition (quick runs)", none="all")
    batch_size: int = opt(64, "images per prediction batch")
    threshold: float = opt(0.5, "the decision threshold used everywhere")
    pairs: tuple[str, ...] = opt(
        ("Male,Young", "Male,Eyeglasses", "Young,Pale_Skin", "Male,Heavy_Makeup"),
        "attribute pairs A,B whose 2x2 cohorts get a heatmap; the first drives the summary",
    )
    projections: tuple[str, ...] = opt(("pca", "tsne", "umap"), "2-D latent projections (umap only when installed)")
    faces: int = opt(6, "faces per Grad-CAM row")
    bins: int = opt(5, "quantile bins of numeric group columns, mean luminance and sharpness")
    balance_tolerance: float = opt(0.02, "the balancing threshold may cost at most this much of the best accuracy")
    check_images: bool = opt(False, "decode every image up front and skip unreadable ones")
    seed: int = opt(0, "seed of the t-SNE / UMAP projections")
