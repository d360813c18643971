"""`poetry run analyze`: where do the models fail? Cohorts, confusion, latent space, saliency, image-statistic
slices and calibration for one or more saved models side by side, as PNGs plus one Markdown report."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd

from celeba.config import DEFAULT_MODEL, opt
from celeba.data import SAMPLE_DIR, CelebADataError, check_labels, labels_array, load_index, split
from celeba.metrics import cohort_accuracy, cohort_names, label_metrics
from celeba.runcard import RunCard, card_path

log = logging.getLogger(__name__)

STATS = ("mean_luminance", "sharpness")
PROJECTIONS = ("pca", "tsne", "umap")
MIN_CELL = 30  # cohorts with fewer test images are left out of the headline gaps (too noisy to rank)
SPLIT_BY = "Male"  # confusion matrices of the other labels are also split by gender (women falsely called Young)


@dataclass
class AnalyzeConfig:
    """Bias analysis of saved models on one CelebA partition. Repeat --model to compare models side by side."""

    model: tuple[Path, ...] = opt((DEFAULT_MODEL,), "saved .keras models (run cards beside them); repeat --model or "
                                                    "list several; the first is the reference of the deltas")
    data_dir: Path = opt(SAMPLE_DIR, "a CelebA folder (official or Kaggle layout)")
    partition: Literal["train", "validation", "test"] = opt("test", "which official partition to analyse")
    out: Path | None = opt(None, "folder for report.md, the figures and the CSVs", none="reports/analysis-<partition>/")
    limit: int | None = opt(None, "only the first N images of the partition (quick runs)", none="all")
    batch_size: int = opt(64, "images per prediction batch")
    threshold: float = opt(0.5, "the decision threshold used everywhere")
    pairs: tuple[str, ...] = opt(("Male,Young", "Male,Eyeglasses", "Young,Pale_Skin", "Male,Heavy_Makeup"),
                                 "attribute pairs A,B whose 2x2 cohorts get a heatmap; the first drives the summary")
    projections: tuple[str, ...] = opt(("pca", "tsne", "umap"), "2-D latent projections (umap only when installed)")
    faces: int = opt(6, "faces per Grad-CAM row")
    bins: int = opt(5, "quantile bins of mean luminance and sharpness")
    min_slice: int = opt(20, "smallest slice listed among the worst slices")
    balance_tolerance: float = opt(0.02, "the balancing threshold may cost at most this much of the best accuracy")
    check_images: bool = opt(False, "decode every image up front and skip unreadable ones")
    seed: int = opt(0, "seed of the t-SNE / UMAP projections")


@dataclass
class ModelRun:
    """One model's outputs on the analysed rows, for the common labels."""

    name: str
    note: str
    model: Any
    image_size: int
    label_index: list[int]  # columns of the common labels in the model's outputs
    probs: np.ndarray
    embeddings: np.ndarray
    card: RunCard | None = None


# --------------------------------------------------------------------------- command line


def parse_pairs(pairs: Sequence[str]) -> list[tuple[str, str]]:
    result = []
    for pair in pairs:
        parts = tuple(p.strip() for p in pair.split(","))
        if len(parts) != 2 or parts[0] == parts[1]:
            raise CelebADataError(f"--pairs: {pair!r} must be two different attributes like Male,Young")
        result.append(check_labels(parts))
    return result


# --------------------------------------------------------------------------- tables (numpy / pandas)


def train_distribution(train: pd.DataFrame, pair: Sequence[str], labels: Sequence[str]) -> pd.DataFrame:
    """Training images per cohort, their share, and each label's positive rate inside the cohort."""
    groups = train.groupby(cohort_names(train, pair).to_numpy())
    table = groups[list(labels)].mean().add_suffix("_positive")
    table.insert(0, "share", groups.size() / len(train))
    table.insert(0, "n", groups.size())
    return table.rename_axis("cohort")


def confusion_table(frame: pd.DataFrame, y_true: np.ndarray, y_prob: np.ndarray, labels: Sequence[str],
                    split_by: str = SPLIT_BY, threshold: float = 0.5) -> pd.DataFrame:
    """Counts and error rates per label, overall and inside each `split_by` group (the other labels only)."""
    is_group = frame[split_by].to_numpy() == 1
    masks = {"all": np.ones(len(frame), bool), split_by: is_group, f"Not {split_by}": ~is_group}
    parts = []
    for group, mask in masks.items():
        if not mask.any():
            continue
        m = label_metrics(y_true[mask], y_prob[mask], labels, threshold)[["n", "accuracy", "tn", "fp", "fn", "tp"]]
        m["fpr"] = m["fp"] / (m["fp"] + m["tn"]).clip(lower=1)
        m["fnr"] = m["fn"] / (m["fn"] + m["tp"]).clip(lower=1)
        parts.append(m.assign(group=group).reset_index())
    table = pd.concat(parts)
    table = table[(table["group"] == "all") | (table["label"] != split_by)]
    order = {label: i for i, label in enumerate(labels)}
    table = table.sort_values("label", key=lambda s: s.map(order), kind="stable")
    return table.set_index(["label", "group"])


def _short(x: float) -> str:
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.0f}"


def slice_masks(frame: pd.DataFrame, stats: pd.DataFrame, pairs: Sequence[tuple[str, str]],
                bins: int) -> dict[str, tuple[str, np.ndarray]]:
    """Named boolean masks over the rows: each attribute value, each pair cohort, each quantile bin of a statistic.

    A cohort that holds exactly the rows of an earlier slice (Male & Not Heavy_Makeup = Male) is listed once.
    """
    masks: dict[str, tuple[str, np.ndarray]] = {}
    seen: set[bytes] = set()

    def add(name: str, kind: str, mask: np.ndarray, dedupe: bool = True) -> None:
        if name not in masks and not (dedupe and mask.tobytes() in seen):
            masks[name] = (kind, mask)
            seen.add(mask.tobytes())

    for pair in pairs:
        for attribute in pair:
            values = frame[attribute].to_numpy() == 1
            add(attribute, "attribute", values)
            add(f"Not {attribute}", "attribute", ~values)
        names = cohort_names(frame, pair).to_numpy()
        for name in sorted(set(names)):
            add(name, "cohort", names == name)
    for stat in STATS:
        binned = pd.qcut(stats[stat].to_numpy(), bins, duplicates="drop")
        for interval in binned.categories:
            add(f"{stat} {_short(interval.left)}-{_short(interval.right)}", stat, np.asarray(binned == interval),
                dedupe=False)  # every bin stays, so the slice curves keep their x axis
    return masks


def slice_accuracy(masks: dict[str, tuple[str, np.ndarray]], correct: np.ndarray,
                   labels: Sequence[str]) -> pd.DataFrame:
    """Size and per-label accuracy of every slice (rows: slices, in the order given)."""
    records = [{"slice": name, "kind": kind, "n": int(mask.sum()),
                **{f"{label}_accuracy": correct[mask, j].mean() if mask.any() else np.nan
                   for j, label in enumerate(labels)}}
               for name, (kind, mask) in masks.items()]
    return pd.DataFrame(records).set_index("slice")


def worst_slices(tables: dict[str, pd.DataFrame], labels: Sequence[str], min_size: int,
                 top: int = 8) -> pd.DataFrame:
    """The least accurate slices of at least `min_size` images, per model and label."""
    parts = []
    for model, table in tables.items():
        big = table[table["n"] >= min_size]
        for label in labels:
            worst = big.nsmallest(top, f"{label}_accuracy")
            parts.append(pd.DataFrame({"model": model, "label": label, "slice": worst.index, "kind": worst["kind"],
                                       "n": worst["n"], "accuracy": worst[f"{label}_accuracy"]}))
    return pd.concat(parts, ignore_index=True)


def calibration_curve(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 10) -> tuple[pd.DataFrame, float]:
    """Equal-width bins: mean confidence, observed positive rate, count; and the expected calibration error."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(y_prob, edges[1:-1]), 0, n_bins - 1)
    curve = (pd.DataFrame({"bin": bins, "p": y_prob, "y": y_true})
             .groupby("bin").agg(confidence=("p", "mean"), observed=("y", "mean"), n=("y", "size")))
    ece = float((curve["n"] * (curve["confidence"] - curve["observed"]).abs()).sum() / max(len(y_prob), 1))
    return curve, ece


THRESHOLD_GRID = np.round(np.arange(0.02, 0.99, 0.01), 2)


def threshold_curves(frame: pd.DataFrame, y_true: np.ndarray, y_prob: np.ndarray, by: Sequence[str],
                     grid: np.ndarray = THRESHOLD_GRID) -> pd.DataFrame:
    """One label's accuracy inside every cohort of `by` (columns, plus 'all') at every threshold (rows)."""
    correct = (y_prob[:, None] >= grid[None, :]) == (y_true[:, None] >= 0.5)
    curves = pd.DataFrame(correct, columns=grid).groupby(cohort_names(frame, by).to_numpy()).mean().T
    curves["all"] = correct.mean(axis=0)
    return curves.rename_axis("threshold")


def balancing_cohorts(label: str, by: Sequence[str]) -> list[str]:
    return [a for a in by if a != label] or list(by)


def balancing_thresholds(frame: pd.DataFrame, y_true: np.ndarray, y_prob: np.ndarray, labels: Sequence[str],
                         by: Sequence[str], threshold: float = 0.5, tolerance: float = 0.02) -> pd.DataFrame:
    """Per label, the threshold that minimises the accuracy gap (max - min) between the cohorts of `by`, among the
    thresholds whose overall accuracy is within `tolerance` of the best (else "everything negative" often wins).

    A label is balanced across the cohorts of the other attributes (Young across Male / Not Male): across its own
    classes "balancing" would only trade recall for specificity. Reported, never applied to the other results.
    """
    records = []
    for j, label in enumerate(labels):
        groups = balancing_cohorts(label, by)
        curves = threshold_curves(frame, y_true[:, j], y_prob[:, j], groups)
        cohorts = curves.drop(columns="all")
        gaps = (cohorts.max(axis=1) - cohorts.min(axis=1)).to_numpy()
        overall = curves["all"].to_numpy()
        gaps = np.where(overall >= overall.max() - tolerance, gaps, np.inf)
        best = np.lexsort((-overall, gaps))[0]  # smallest allowed gap, then highest accuracy
        default = threshold_curves(frame, y_true[:, j], y_prob[:, j], groups, np.array([threshold])).iloc[0]
        at_default = default.drop("all")
        records.append({"label": label, "cohorts": " x ".join(groups), "threshold": threshold,
                        "gap": at_default.max() - at_default.min(), "worst_cohort": at_default.idxmin(),
                        "accuracy": default["all"], "balancing_threshold": float(curves.index[best]),
                        "gap_balanced": float(gaps[best]), "accuracy_balanced": float(curves["all"].iloc[best])})
    return pd.DataFrame(records).set_index("label")


def summary(metrics: pd.DataFrame, cohorts: pd.DataFrame, calibration: pd.DataFrame,
            labels: Sequence[str]) -> pd.Series:
    """The headline numbers of one model, as one comparable column."""
    values: dict[str, float] = {}
    for label in labels:
        values[f"{label} accuracy"] = metrics.at[label, "accuracy"]
        values[f"{label} F1"] = metrics.at[label, "f1"]
        values[f"{label} ROC-AUC"] = metrics.at[label, "roc_auc"]
        values[f"{label} ECE"] = calibration.at[label, "ece"]
        column = cohorts[f"{label}_accuracy"]
        for cohort, acc in column.items():
            values[f"{label} accuracy | {cohort}"] = acc
        values[f"{label} cohort gap (max - min)"] = column.max() - column.min()
    return pd.Series(values)


def delta_table(summaries: dict[str, pd.Series]) -> pd.DataFrame:
    """Models side by side, plus each model minus the first (the reference)."""
    table = pd.DataFrame(summaries).rename_axis("metric")
    reference = table.columns[0]
    for name in table.columns[1:]:
        table[f"{name} - {reference}"] = table[name] - table[reference]
    return table


def pts(difference: float) -> str:
    """A difference of two rates in percentage points ("a gap of 14.3%" would read as a relative change)."""
    return f"{difference * 100:.1f} pts"


def findings(cohorts: dict[str, pd.DataFrame], confusion: dict[str, pd.DataFrame], labels: Sequence[str],
             split_by: str = SPLIT_BY) -> list[str]:
    """Plain sentences for the top of the report: each label's cohort gap, error rates by gender, and deltas."""
    lines, gaps = [], {}
    for model, table in cohorts.items():
        big_enough = table["n"] >= MIN_CELL
        for label in labels:
            acc = table[f"{label}_accuracy"]
            small = ", ".join(f"{c} (n={table.at[c, 'n']})" for c in acc.index[~big_enough])
            if big_enough.sum() >= 2:  # cells of a handful of images would make the headline gap noise
                acc = acc[big_enough]
            caveat = (f"; left out, under {MIN_CELL} images: {small}" if big_enough.sum() >= 2 else
                      f"; caution, under {MIN_CELL} images: {small}") if small else ""
            gaps[model, label] = acc.max() - acc.min()
            lines.append(f"{model}: {label} accuracy ranges from {acc.min():.1%} ({acc.idxmin()}, "
                         f"n={table.at[acc.idxmin(), 'n']}) to {acc.max():.1%} ({acc.idxmax()}, "
                         f"n={table.at[acc.idxmax(), 'n']}), a gap of {pts(gaps[model, label])}{caveat}.")
        for label in labels:
            if label == split_by:
                continue
            rate = confusion[model]["fpr"]
            groups = [g for g in (f"Not {split_by}", split_by) if (label, g) in rate.index]
            if len(groups) == 2:
                lines.append(f"{model}: {label} false-positive rate {rate[label, groups[0]]:.1%} ({groups[0]}) vs "
                             f"{rate[label, groups[1]]:.1%} ({groups[1]}).")
    models = list(cohorts)
    for model in models[1:]:
        for label in labels:
            before, after = gaps[models[0], label], gaps[model, label]
            verdict = "narrower" if after < before else "wider" if after > before else "unchanged"
            lines.append(f"{label} cohort gap {pts(before)} ({models[0]}) -> {pts(after)} ({model}): {verdict} "
                         f"by {pts(abs(after - before))}.")
    return lines


# --------------------------------------------------------------------------- models, images, embeddings


def describe(card: RunCard | None) -> str:
    """'bce, from scratch, 96 px, 20 epochs, 4000 train images': said next to every figure."""
    cfg = card.config if card else {}
    weights = str(cfg.get("weights", "?"))
    init = {"none": "from scratch", "imagenet": "ImageNet init"}.get(weights.lower(), f"init {Path(weights).name}")
    return (f"{cfg.get('loss', '?')}, {init}, {cfg.get('image_size', '?')} px, {cfg.get('epochs', '?')} epochs, "
            f"{card.data.get('train', '?') if card else '?'} train images")


def trained_on(card: RunCard | None) -> str | None:
    """The data folder a model was trained on, from its run card (absolute when the card has provenance)."""
    if card is None:
        return None
    return card.provenance.get("data_dir") or card.config.get("data_dir")


def distribution_note(data_dir: Path, runs: Sequence[ModelRun]) -> str:
    """Whose training data the training-partition figure shows: the analysed folder's, which may not be the models'."""
    text = f"Training partition of {data_dir} (the analysed folder)."
    for run in runs:
        source = trained_on(run.card)
        if source is None:
            text += f" {run.name}: no run card, training data unknown."
        elif Path(source).resolve() == Path(data_dir).resolve():
            text += f" {run.name} was trained on this data."
        else:
            text += f" {run.name} was trained on {source}, not on this folder."
    return text


def unique_names(paths: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for path in paths:
        name, k = Path(path).stem, 2
        while name in names:
            name, k = f"{Path(path).stem}-{k}", k + 1
        names.append(name)
    return names


def run_models(cfg: AnalyzeConfig, rows: pd.DataFrame) -> tuple[list[ModelRun], tuple[str, ...]]:
    """Load every model; embeddings and probabilities in one pass per model (a two-output view of it)."""
    import keras

    from celeba.evaluate import predict
    from celeba.model import load_model, model_image_size

    loaded = [load_model(path) for path in cfg.model]
    labels = tuple(label for label in loaded[0][1] if all(label in lab for _, lab in loaded))
    if not labels:
        raise CelebADataError(f"the models share no label: {[list(lab) for _, lab in loaded]}")
    runs = []
    for path, name, (model, model_labels) in zip(cfg.model, unique_names(cfg.model), loaded):
        card = RunCard.load(path) if card_path(path).is_file() else None
        size = model_image_size(model)
        both = keras.Model(model.inputs, [model.get_layer("embedding").output, model.output])
        log.info("%s: embeddings and predictions for %d images", name, len(rows))
        embeddings, probs = predict(both, rows, model_labels, size, cfg.batch_size)
        index = [model_labels.index(label) for label in labels]
        runs.append(ModelRun(name, f"{name}: {describe(card)}", model, size, index, probs[:, index], embeddings,
                             card))
    return runs, labels


def image_statistics(rows: pd.DataFrame) -> pd.DataFrame:
    """Luminance, contrast, sharpness and file size of every image file (threads: cv2 releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from celeba.image_stats import file_statistics

    with ThreadPoolExecutor(4) as pool:
        stats = list(tqdm(pool.map(file_statistics, rows["path"]), total=len(rows), desc="image statistics",
                          unit="img", leave=False, disable=None))  # None: no bar when stderr is not a terminal
    return pd.DataFrame(stats, index=rows.index)


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


def available_projections(requested: Sequence[str]) -> list[str]:
    import importlib.util

    unknown = [p for p in requested if p not in PROJECTIONS]
    if unknown:
        raise CelebADataError(f"--projections: unknown {unknown}; choose from {PROJECTIONS}")
    if "umap" in requested and importlib.util.find_spec("umap") is None:
        log.info("umap-learn is not installed: skipping the UMAP projection")
    return [p for p in requested if p != "umap" or importlib.util.find_spec("umap") is not None]


def saliency_picks(y_true: np.ndarray, y_prob: np.ndarray, k: int, threshold: float) -> dict[str, np.ndarray]:
    """Row indices: the highest scores, the lowest scores, and the most confident errors."""
    order = np.argsort(y_prob, kind="stable")
    errors = np.flatnonzero((y_prob >= threshold) != (y_true >= 0.5))
    worst = errors[np.argsort(-np.abs(y_prob[errors] - y_true[errors]), kind="stable")]
    return {"highest": order[::-1][:k], "lowest": order[:k], "errors": worst[:k]}


def saliency_rows(run: ModelRun, rows: pd.DataFrame, y_true: np.ndarray, label: str, j: int, k: int,
                  threshold: float) -> list[tuple[str, np.ndarray, list[str]]]:
    """Grad-CAM overlays: what pushes towards the label (top scores), away from it (bottom), and on errors."""
    from celeba.data import load_image
    from celeba.saliency import gradcam, gradcam_model, overlay

    grad_model = gradcam_model(run.model)
    picks = saliency_picks(y_true[:, j], run.probs[:, j], k, threshold)
    output = run.label_index[j]
    result = []
    for kind, title in (("highest", f"towards {label}\n(highest scores)"),
                        ("lowest", f"away from {label}\n(lowest scores)"),
                        ("errors", "worst errors\n(towards the\nwrong answer)")):
        idx = picks[kind]
        if len(idx) == 0:
            result.append((title, np.zeros((0, 1, 1, 3), np.uint8), []))
            continue
        images = np.stack([load_image(rows.at[i, "path"], run.image_size).numpy() for i in idx])
        if kind == "errors":  # explain the wrong answer: towards the label for false positives, away for misses
            pushes_up = run.probs[idx, j] >= threshold
            cams = np.where(pushes_up[:, None, None], gradcam(run.model, images, output, True, grad_model),
                            gradcam(run.model, images, output, False, grad_model))
        else:
            cams = gradcam(run.model, images, output, kind == "highest", grad_model)
        captions = [f"p={run.probs[i, j]:.2f} y={int(y_true[i, j])}" for i in idx]
        result.append((title, np.stack([overlay(im, cam) for im, cam in zip(images, cams)]), captions))
    return result


# --------------------------------------------------------------------------- the report


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


def write_report(out: Path, sections: list[tuple[str, str, list[Path], list[tuple[str, pd.DataFrame]]]],
                 header: str) -> Path:
    """One Markdown file: per section a sentence, its figures (relative links) and its tables."""
    parts = [header]
    for title, text, figures, tables in sections:
        parts.append(f"## {title}\n\n{text}")
        parts += [f"![{fig.stem}]({fig.name})" for fig in figures]
        parts += [f"**{caption}**\n\n{markdown_table(table)}" for caption, table in tables]
    path = out / "report.md"
    path.write_text("\n\n".join(parts) + "\n")
    return path


def analyze(cfg: AnalyzeConfig) -> dict[str, Any]:
    """Compute every table, draw every figure, write report.md and the CSVs under `out`."""
    from celeba import plots

    pairs = parse_pairs(cfg.pairs)
    projections = available_projections(cfg.projections)
    index = load_index(cfg.data_dir, check_images=cfg.check_images)
    rows = split(index, cfg.partition, cfg.limit)
    if rows.empty:
        raise CelebADataError(f"{cfg.data_dir}: no {cfg.partition} images")
    train = split(index, "train")
    out = Path(cfg.out or Path("reports") / f"analysis-{cfg.partition}")
    out.mkdir(parents=True, exist_ok=True)

    runs, labels = run_models(cfg, rows)
    names = [run.name for run in runs]
    note = "\n".join(run.note for run in runs)
    y_true = labels_array(rows, labels)
    stats = image_statistics(rows)
    masks = slice_masks(rows, stats, pairs, cfg.bins)

    metrics = {r.name: label_metrics(y_true, r.probs, labels, cfg.threshold) for r in runs}
    cohorts = {pair: {r.name: cohort_accuracy(rows, y_true, r.probs, labels, pair, cfg.threshold) for r in runs}
               for pair in pairs}
    confusion = {r.name: confusion_table(rows, y_true, r.probs, labels, SPLIT_BY, cfg.threshold) for r in runs}
    slices = {r.name: slice_accuracy(masks, (r.probs >= cfg.threshold) == (y_true >= 0.5), labels) for r in runs}
    worst = worst_slices(slices, labels, cfg.min_slice)
    curves: dict[str, dict[str, pd.DataFrame]] = {}
    ece_rows = []
    for r in runs:
        curves[r.name] = {}
        for j, label in enumerate(labels):
            curves[r.name][label], ece = calibration_curve(y_true[:, j], r.probs[:, j])
            ece_rows.append({"model": r.name, "label": label, "ece": ece,
                             "brier": float(np.mean((r.probs[:, j] - y_true[:, j]) ** 2))})
    calibration = pd.DataFrame(ece_rows).set_index(["model", "label"])
    thresholds = pd.concat({r.name: balancing_thresholds(rows, y_true, r.probs, labels, pairs[0], cfg.threshold,
                                                               cfg.balance_tolerance)
                            for r in runs}, names=["model"])
    distribution = {pair: train_distribution(train, pair, labels) for pair in pairs} if len(train) else {}
    deltas = delta_table({r.name: summary(metrics[r.name], cohorts[pairs[0]][r.name],
                                          calibration.loc[r.name], labels) for r in runs})

    # ---- tables on disk
    pd.concat(metrics, names=["model"]).to_csv(out / "metrics.csv")
    pd.concat({f"{a} x {b}": pd.concat(t, names=["model"]) for (a, b), t in cohorts.items()},
              names=["pair"]).to_csv(out / "cohorts.csv")
    pd.concat(confusion, names=["model"]).to_csv(out / "confusion.csv")
    pd.concat(slices, names=["model"]).to_csv(out / "slices.csv")
    worst.to_csv(out / "worst_slices.csv", index=False)
    calibration.to_csv(out / "calibration.csv")
    thresholds.to_csv(out / "thresholds.csv")
    deltas.to_csv(out / "summary.csv")
    if distribution:
        pd.concat({f"{a} x {b}": t for (a, b), t in distribution.items()}, names=["pair"]).to_csv(
            out / "train_distribution.csv")
    predictions = pd.concat([rows[["image_id", *dict.fromkeys([*labels, *sum(pairs, ())])]], stats], axis=1)
    for r in runs:
        for j, label in enumerate(labels):
            predictions[f"{r.name}:{label}_prob"] = r.probs[:, j]
    predictions.to_csv(out / "predictions.csv", index=False)

    # ---- figures
    figures: dict[str, list[Path]] = {}
    figures["cohorts"] = [plots.cohort_heatmaps(cohorts[pair], pair, labels, out / f"cohorts_{pair[0]}_{pair[1]}.png",
                                                note) for pair in pairs]
    if distribution:
        figures["cohorts"].append(plots.train_distribution(distribution, labels, out / "train_distribution.png",
                                                           distribution_note(cfg.data_dir, runs)))
    figures["confusion"] = [plots.confusion_grid(confusion, out / "confusion.png", note)]
    figures["latent"] = []
    for r in runs:
        for method in projections:
            log.info("%s: %s projection of %d embeddings", r.name, method, len(r.embeddings))
            points = project(r.embeddings, method, cfg.seed)
            figures["latent"].append(plots.latent_space(
                points, y_true, r.probs >= cfg.threshold, labels, f"{r.name}: embeddings, {method.upper()}",
                out / f"latent_{method}_{r.name}.png", r.note))
    figures["saliency"] = []
    for r in runs:
        for j, label in enumerate(labels):
            log.info("%s: Grad-CAM for %s", r.name, label)
            grid = saliency_rows(r, rows, y_true, label, j, cfg.faces, cfg.threshold)
            figures["saliency"].append(plots.gradcam_grid(grid, f"{r.name}: Grad-CAM for {label}",
                                                          out / f"gradcam_{label}_{r.name}.png", r.note))
    figures["slices"] = [plots.slice_curves(slices, labels, STATS, out / "slices.png", note)]
    figures["calibration"] = [
        plots.reliability(curves, calibration, labels, out / "reliability.png", note),
        plots.threshold_curves({r.name: {label: threshold_curves(rows, y_true[:, j], r.probs[:, j],
                                                                  balancing_cohorts(label, pairs[0]))
                                         for j, label in enumerate(labels)} for r in runs},
                               thresholds, out / "thresholds.png", note)]

    # ---- report
    a, b = pairs[0]
    header = (f"# Bias analysis: {', '.join(names)} on {cfg.data_dir} ({cfg.partition}, {len(rows)} images)\n\n"
              + "\n".join(f"- {r.note}" for r in runs)
              + f"\n\nDecision threshold {cfg.threshold} everywhere; generated by `poetry run analyze`.")
    facts = findings(cohorts[pairs[0]], confusion, labels)
    sections = [
        ("Findings", "\n".join(f"- {line}" for line in facts), [], []),
        ("Summary" + (" and deltas" if len(runs) > 1 else ""),
         f"Headline numbers per model (cohorts: {a} x {b})"
         + (f"; the last columns are each model minus the reference `{names[0]}`." if len(runs) > 1 else "."),
         [], [("summary", deltas), ("per-label metrics", pd.concat(metrics, names=["model"]))]),
        ("Accuracy per cohort", "Accuracy of each label inside every cohort (cell counts in the figures).",
         figures["cohorts"],
         [(f"{p} x {q}", pd.concat(cohorts[(p, q)], names=["model"])) for p, q in pairs]
         + [(f"training partition, {p} x {q} ({distribution_note(cfg.data_dir, runs)})", t)
            for (p, q), t in distribution.items()]),
        ("Confusion matrices", f"Per label, and the other labels split by {SPLIT_BY} (fpr: false positive rate).",
         figures["confusion"], [("confusion", pd.concat(confusion, names=["model"]))]),
        ("Latent space", "Pooled backbone embeddings in 2-D, coloured by ground truth and by prediction.",
         figures["latent"], []),
        ("Saliency (Grad-CAM)", "Rows: what raises the score on the highest-scored faces, what lowers it on the "
         "lowest-scored, and what drove the most confident errors.", figures["saliency"], []),
        ("Slices by image statistics", "Mean luminance is a proxy for skin tone and lighting together; sharpness "
         f"is the Laplacian variance. Worst slices: at least {cfg.min_slice} images.", figures["slices"],
         [("worst slices", worst)]),
        ("Calibration and cohort-balancing thresholds",
         f"The balancing threshold minimises a label's accuracy gap between the cohorts of the other attribute(s) of "
         f"{a} x {b} (e.g. {b} across {a} / Not {a}) among the thresholds within {cfg.balance_tolerance:g} of the "
         "best overall accuracy; it is reported here and NOT applied to any other number.",
         figures["calibration"],
         [("calibration", calibration), ("thresholds", thresholds)]),
    ]
    report = write_report(out, sections, header)
    return {"report": report, "out": out, "labels": labels, "models": names, "figures": figures,
            "summary": deltas, "findings": facts, "cohorts": cohorts, "thresholds": thresholds}
