"""`celeba repair MODEL`: Deep Feature Reweighting (Kirichenko et al. 2022): retrain only the last layer on
group-balanced data.

The network's features (the 128-d input of the sigmoid layer) are extracted once. For each label, a logistic
regression is fitted on group-balanced draws (every group subsampled to the smallest group's size) of half of the
repair data, for every regularisation strength of a grid; the strength whose averaged draws give the best
worst-group accuracy on the other half is kept, and the last layer is refitted with it on all of the repair data
(the paper's recipe: L1 logistic regression, standardised features, averaged draws). `--no-balance` refits the
same layer on all rows without any group information: the baseline that says what balancing adds.

The repair data is a CelebA partition (validation by default) with groups from its attributes, or a labelled
photo folder (`--images`, the reader of `analyze --images`) with its own groups (`--groups race,gender`). The
repaired model is a normal `.keras` with a run card naming the repair data and groups: predict, serve, evaluate
and export take it unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from celeba.config import DEFAULT_MODEL, ConfigError, at_least, fraction, opt, positive, resolve_model
from celeba.data import SAMPLE_DIR, CelebADataError, labels_array, load_index, make_dataset, split
from celeba.groups import GroupReport, group_of, group_report, parse_groups

log = logging.getLogger(__name__)

FEATURE_LAYER = "head_relu"  # the sigmoid layer's input at inference (dropout is inactive there)


@dataclass
class RepairConfig:
    """Retrain a model's last layer on group-balanced data (DFR); writes a new model and its run card."""

    model: tuple[Path, ...] = opt((DEFAULT_MODEL,), "the .keras model to repair", positional=True, metavar="MODEL")
    data_dir: Path = opt(SAMPLE_DIR, "a CelebA folder whose --partition is the repair data")
    partition: Literal["train", "validation"] = opt("validation", "the CelebA partition to repair on")
    images: Path | None = opt(None, "a labelled photo folder to repair on instead of CelebA", none="CelebA")
    labels_csv: Path | None = opt(None, "with --images: CSV with file, labels and group columns", none="none")
    filename_pattern: str | None = opt(
        None, "with --images, instead of a CSV: e.g. '{age}_{gender}_{race}_*.jpg'", none="none"
    )
    derive: tuple[str, ...] = opt((), "with --images: labels from other columns, e.g. 'Young=age<30'")
    split_file: Path | None = opt(
        None, "with --images: file,split CSV; only --parts of it are used", none="every photo"
    )
    parts: tuple[str, ...] = opt(
        ("train", "validation"), "with --split-file: the parts to repair on (never evaluation)"
    )
    crops_dir: Path | None = opt(
        None, "where the photos' face crops are cached", none="~/.cache/celeba-attributes/crops/<folder>"
    )
    groups: tuple[str, ...] = opt(("Male,Young",), "columns whose value combinations are the groups, e.g. race,gender")
    labels: tuple[str, ...] = opt((), "the labels to repair", none="every label of the model")
    balance: bool = opt(True, "balance the groups (DFR); --no-balance: a plain refit without group information")
    draws: int = opt(10, "group-balanced draws averaged per fit")
    strengths: tuple[float, ...] = opt((0.03, 0.1, 0.3, 1.0, 3.0), "inverse L1 strengths (C) tried")
    held_out: float = opt(0.5, "share of the repair data that chooses C (the rest fits)")
    limit: int | None = opt(None, "at most N rows of repair data (quick runs)", none="all")
    batch_size: int = opt(64, "images per feature batch")
    seed: int = opt(0, "seeds the split and the draws")
    models_dir: Path = opt(Path("models"), "where <name>.keras and its run card go")
    name: str | None = opt(None, "the repaired model's name", none="<model>-dfr-<data>")

    def __post_init__(self) -> None:
        self.model = tuple(self.model) or (DEFAULT_MODEL,)  # no MODEL given: the default model
        if len(self.model) != 1:
            raise ConfigError(f"MODEL: repair one model at a time, got {len(self.model)}")
        at_least(self, 1, "draws", "limit", "batch_size")
        fraction(self, "held_out", below_one=True)
        if not self.strengths:
            raise ConfigError("--strengths: give at least one value")
        for value in self.strengths:
            if not (np.isfinite(value) and value > 0):
                raise ConfigError(f"--strengths: must be finite numbers > 0, got {value!r}")
        positive(self, "held_out")
        if "evaluation" in self.parts:
            raise ConfigError("--parts: the evaluation part is for reporting only, never for repairing")
        if self.images is not None and (self.labels_csv is None) == (self.filename_pattern is None):
            raise ConfigError("--images: give exactly one of --labels-csv FILE or --filename-pattern PATTERN")
        self.group_names = parse_groups(self.groups)

    @property
    def data_name(self) -> str:
        return Path(self.images).parent.name if self.images is not None else f"celeba-{self.partition}"

    @property
    def out_name(self) -> str:
        method = "dfr" if self.balance else "refit"
        return self.name or f"{Path(self.model[0]).stem}-{method}-{self.data_name}"


@dataclass
class LabelRepair:
    label: str
    strength: float
    before: GroupReport  # the original layer on the held-out half
    after: GroupReport  # the layer fitted on the other half, on the held-out half


@dataclass
class RepairResult:
    model: Path
    card: Path
    data: str
    groups: tuple[str, ...]
    n: int
    repairs: list[LabelRepair]


# --------------------------------------------------------------------------- data and features


def repair_rows(cfg: RepairConfig, labels: tuple[str, ...]) -> tuple[pd.DataFrame, str]:
    """The repair rows (`path` of a CelebA-style image, labels, group columns) and one line saying what they are."""
    if cfg.images is None:
        rows = split(load_index(cfg.data_dir), cfg.partition, cfg.limit)
        if rows.empty:
            raise CelebADataError(f"{cfg.data_dir}: no {cfg.partition} images")
        return rows, f"{cfg.data_dir} {cfg.partition} partition ({len(rows)} images)"
    from celeba.sources import PhotoSource, photo_rows

    source = PhotoSource(cfg.images, cfg.labels_csv, cfg.filename_pattern, cfg.derive, cfg.split_file, cfg.crops_dir)
    rows = photo_rows(source, labels, cfg.parts if cfg.split_file is not None else None, keep_groups=True)
    if cfg.limit is not None:
        rows = rows.iloc[: cfg.limit].reset_index(drop=True)
    parts = f" parts {', '.join(cfg.parts)} of {cfg.split_file}" if cfg.split_file else ""
    return rows, f"{cfg.images}{parts} ({len(rows)} photos with a face)"


def features(model: Any, rows: pd.DataFrame, labels: tuple[str, ...], batch_size: int) -> np.ndarray:
    """The last layer's inputs for every row, in order (one pass of the network)."""
    import keras

    from celeba.model import model_image_size
    from celeba.runtime import keras_verbose

    head = keras.Model(model.inputs, model.get_layer(FEATURE_LAYER).output)
    ds = make_dataset(
        rows.assign(**{label: rows[label].fillna(0) for label in labels}), labels, model_image_size(model), batch_size
    )
    return np.asarray(head.predict(ds, verbose=keras_verbose()))


# --------------------------------------------------------------------------- the fit


def halves(groups: pd.Series, held_out: float, seed: int) -> np.ndarray:
    """A boolean mask of the held-out rows, stratified by group."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(groups), bool)
    for _, index in groups.reset_index(drop=True).groupby(groups.to_numpy()).groups.items():
        order = rng.permutation(np.asarray(index))
        mask[order[: int(round(held_out * len(order)))]] = True
    return mask


def balanced_draw(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices with every group subsampled, without replacement, to the smallest group's size."""
    names, counts = np.unique(groups, return_counts=True)
    size = counts.min()
    return np.concatenate([rng.choice(np.flatnonzero(groups == g), size, replace=False) for g in names])


def fit_layer(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, strength: float, draws: int, balance: bool, seed: int
) -> tuple[np.ndarray, float]:
    """(weights, bias) of a logistic regression on raw features: L1 on standardised features, averaged draws."""
    from sklearn.linear_model import LogisticRegression

    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / std
    rng = np.random.default_rng(seed)
    coefs, intercepts = [], []
    for _ in range(draws if balance else 1):
        rows = balanced_draw(groups, rng) if balance else np.arange(len(y))
        if len(np.unique(y[rows])) < 2:
            continue
        fit = LogisticRegression(C=strength, l1_ratio=1.0, solver="liblinear", max_iter=1000, random_state=0)
        fit.fit(z[rows], y[rows])
        coefs.append(fit.coef_[0])
        intercepts.append(fit.intercept_[0])
    if not coefs:
        raise CelebADataError("repair: every draw holds one class only; the groups cannot teach this label")
    w, b = np.mean(coefs, axis=0), float(np.mean(intercepts))
    return w / std, b - float(np.sum(w * mean / std))  # folded back onto the raw features


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))


def repair_label(
    label: str, x: np.ndarray, y: np.ndarray, groups: pd.Series, layer: tuple[np.ndarray, float], cfg: RepairConfig
) -> tuple[LabelRepair, tuple[np.ndarray, float]]:
    """Choose C on the held-out half by worst-group accuracy; refit on all rows; the before/after reports."""
    known = np.isfinite(y)
    x, y, g = x[known], y[known].astype(int), groups[known].reset_index(drop=True)
    held = halves(g, cfg.held_out, cfg.seed)
    fit_groups = g.to_numpy()
    best: tuple[float, float, tuple[np.ndarray, float]] | None = None
    for strength in cfg.strengths:
        w, b = fit_layer(x[~held], y[~held], fit_groups[~held], strength, cfg.draws, cfg.balance, cfg.seed)
        report = group_report(label, y[held], _sigmoid(x[held] @ w + b), g[held], seed=cfg.seed)
        log.info("%s: C=%g worst group %.3f, average %.3f", label, strength, report.worst, report.average)
        if best is None or report.worst > best[1]:
            best = (strength, report.worst, (w, b))
    assert best is not None
    strength, _, (w, b) = best
    after = group_report(label, y[held], _sigmoid(x[held] @ w + b), g[held], seed=cfg.seed)
    before = group_report(label, y[held], _sigmoid(x[held] @ layer[0] + layer[1]), g[held], seed=cfg.seed)
    final = fit_layer(x, y, fit_groups, strength, cfg.draws, cfg.balance, cfg.seed)
    return LabelRepair(label, strength, before, after), final


def repair(cfg: RepairConfig) -> RepairResult:
    """Load, extract features once, refit the last layer label by label, save the model and its run card."""
    from celeba.checkpoint import save_atomic
    from celeba.model import load_model
    from celeba.runcard import RunCard, card_path

    path = resolve_model(cfg.model[0])
    model, labels = load_model(path)
    targets = cfg.labels or labels
    unknown = [label for label in targets if label not in labels]
    if unknown:
        raise CelebADataError(f"--labels: {', '.join(unknown)} not output by {path} ({', '.join(labels)})")
    rows, data = repair_rows(cfg, labels)
    groups = group_of(rows, cfg.group_names)
    log.info("repair data: %s; %d groups of %s", data, groups.nunique(), " x ".join(cfg.group_names))
    x = features(model, rows, labels, cfg.batch_size)
    y = labels_array(rows, labels)
    dense = model.get_layer("predictions")
    kernel, bias = (np.array(v) for v in dense.get_weights())
    repairs = []
    for label in targets:
        j = labels.index(label)
        if not np.isfinite(y[:, j]).any():
            raise CelebADataError(f"{label}: no truth for it in the repair data ({data})")
        result, (w, b) = repair_label(label, x, y[:, j], groups, (kernel[:, j], float(bias[j])), cfg)
        kernel[:, j], bias[j] = w, b
        repairs.append(result)
    dense.set_weights([kernel, bias])

    out = cfg.models_dir / f"{cfg.out_name}.keras"
    if out.resolve() == path.resolve():
        raise CelebADataError(f"{out}: the repaired model would overwrite the model it repairs; pass --name")
    model.compile(loss=model.loss)  # a fresh, unbuilt optimizer: the file keeps the loss, not training state
    save_atomic(model, out, labels)
    source = RunCard.load(path) if card_path(path).is_file() else None
    card = RunCard(
        model=str(out),
        config=(source.config if source else {"labels": list(labels), "image_size": int(model.input_shape[1])}),
        data=source.data if source else {},
        validation_metrics=source.validation_metrics if source else {},
        epochs_trained=source.epochs_trained if source else None,
        environment=source.environment if source else {},
        provenance=source.provenance if source else {},
        extra={
            "repair": {
                "method": "dfr (group-balanced last layer)" if cfg.balance else "last-layer refit, no groups",
                "repaired_from": str(path),
                "data": data,
                "groups": list(cfg.group_names),
                "labels": list(targets),
                "strengths": {r.label: r.strength for r in repairs},
                "draws": cfg.draws if cfg.balance else 1,
                "held_out": cfg.held_out,
                "seed": cfg.seed,
                "held_out_before": {r.label: r.before.summary() for r in repairs},
                "held_out_after": {r.label: r.after.summary() for r in repairs},
            }
        },
    )
    card.save(card_path(out))
    return RepairResult(out, card_path(out), data, cfg.group_names, len(rows), repairs)
