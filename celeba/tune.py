"""Hyper-parameter search with KerasTuner: every trial is a real `celeba.train.train` run with its own run card.

The tuner (a `keras_tuner.Tuner` with its own `run_trial`) asks KerasTuner's oracle (Bayesian optimisation,
Hyperband or random search) for hyper-parameters, trains them on top of a base training config (the flags, or a
run card given with `--config`), and reports the trial's validation objective back. KerasTuner keeps the search's
state in `<out>/tuner/`: a killed search, run again with the same flags, continues where it stopped (the trial in
flight is retried under its own id, and its training resumes from its last completed epoch). Distributed search
uses KerasTuner's own chief/worker environment variables (docs/tuning.md).

After every trial the search folder gets `trials.csv` (one row per trial), `search.png` (objective per trial,
best so far) and `best.json` (the best trial's run card, configured for `celeba train --config best.json`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celeba.config import ConfigError, TrainConfig
from celeba.data import CelebADataError
from celeba.files import atomic_path
from celeba.tune_config import (
    AUGMENT_STRENGTHS,
    DROPOUTS,
    FINETUNE_LEARNING_RATES,
    LABEL_SMOOTHINGS,
    LEARNING_RATES,
    PROJECT,
    SCHEDULES,
    SCORE_COLUMNS,
    SPACE,
    SUBSET_FLAGS,
    UNFREEZE_DEPTHS,
    WEIGHT_DECAYS,
    TuneConfig,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the search space and objective


def _declarations(cfg: TuneConfig) -> dict[str, Callable[[Any], Any]]:
    """How each searchable setting is declared to KerasTuner, in the order the oracle sees them."""
    low, high, step = DROPOUTS
    return {
        "learning_rate": lambda hp: hp.Float("learning_rate", *LEARNING_RATES, sampling="log"),
        "finetune_learning_rate": lambda hp: hp.Float(
            "finetune_learning_rate", *FINETUNE_LEARNING_RATES, sampling="log"
        ),
        "epochs": (
            (lambda hp: hp.Int("epochs", 1, cfg.max_epochs))
            if cfg.max_epochs > 1
            else (lambda hp: hp.Fixed("epochs", 1))
        ),
        "freeze_epochs": lambda hp: hp.Int("freeze_epochs", 0, max(1, cfg.max_epochs // 2)),
        "unfreeze": lambda hp: hp.Choice("unfreeze", list(UNFREEZE_DEPTHS)),
        "schedule": lambda hp: hp.Choice("schedule", list(SCHEDULES)),
        "dropout": lambda hp: hp.Float("dropout", low, high, step=step),
        "weight_decay": lambda hp: hp.Choice("weight_decay", list(WEIGHT_DECAYS)),
        "label_smoothing": lambda hp: hp.Choice("label_smoothing", list(LABEL_SMOOTHINGS)),
        "image_size": lambda hp: hp.Choice("image_size", sorted(set(cfg.image_sizes))),
        "augment": lambda hp: hp.Boolean("augment"),
        "augment_strength": lambda hp: hp.Choice("augment_strength", list(AUGMENT_STRENGTHS)),
        "loss": lambda hp: hp.Choice("loss", list(dict.fromkeys(cfg.loss_choices))),
    }


def search_space(cfg: TuneConfig) -> Any:
    """KerasTuner's HyperParameters: declared up front, so the oracle samples all of them from the first trial."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    names = cfg.searched()
    for name, declare in _declarations(cfg).items():
        if name in names:
            declare(hp)
    if not hp.space:
        raise ConfigError(
            "--space: nothing left to search (epochs are hyperband's budget; --weights none freezes nothing)"
        )
    return hp


def trial_config(base: TrainConfig, values: Mapping[str, Any], trials_dir: Path, trial_id: str) -> TrainConfig:
    """A trial's training config: the base, the trial's hyper-parameters, its own name and folder."""
    changes = {name: values[name] for name in SPACE if name in values}
    if "dropout" in changes:
        changes["dropout"] = round(float(changes["dropout"]), 6)  # 0.1 steps without float noise
    if "unfreeze" in changes:
        changes["unfreeze"] = int(changes["unfreeze"]) or None  # 0: the whole backbone
    if "tuner/epochs" in values:  # Hyperband's budget; each trial trains from scratch
        changes["epochs"] = int(values["tuner/epochs"])
    return dataclasses.replace(base, **changes, name=f"trial-{trial_id}", models_dir=trials_dir, resume=False)


def objective_values(card: Any) -> dict[str, float]:
    """The trial's scores from its run card, each averaged over the labels (a label without groups counts NaN)."""
    groups = card.extra.get("validation_groups") or {}
    rows = []
    for label in card.labels:
        average = float(card.validation_metrics[label]["accuracy"])
        worst = float(groups[label]["worst"]) if label in groups else math.nan
        balanced = float(groups[label]["balanced"]) if label in groups else math.nan
        rows.append((average, worst, balanced, (average + worst) / 2))

    def mean(values: Sequence[float]) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return round(sum(finite) / len(finite), 4) if finite else math.nan

    return {name: mean([r[i] for r in rows]) for i, name in enumerate(("average", "worst", "balanced", "score"))}


# --------------------------------------------------------------------------- the tuner


def is_worker() -> bool:
    """A KerasTuner worker of a distributed search (the chief holds the oracle and writes the reports)."""
    return "KERASTUNER_ORACLE_IP" in os.environ and "chief" not in os.environ.get("KERASTUNER_TUNER_ID", "")


def make_oracle(cfg: TuneConfig) -> Any:
    import keras_tuner as kt

    common = {
        "objective": kt.Objective(cfg.objective, direction="max"),
        "hyperparameters": search_space(cfg),
        "allow_new_entries": False,
        "seed": cfg.seed,
    }
    if cfg.algorithm == "hyperband":
        return kt.oracles.HyperbandOracle(max_epochs=cfg.max_epochs, factor=cfg.factor, **common)
    if cfg.algorithm == "random":
        return kt.oracles.RandomSearchOracle(max_trials=cfg.max_trials, **common)
    return kt.oracles.BayesianOptimizationOracle(max_trials=cfg.max_trials, **common)


def _user_errors() -> tuple[type[BaseException], ...]:
    from celeba.model import WeightsError

    return (ConfigError, CelebADataError, WeightsError, FileNotFoundError)


def make_tuner(cfg: TuneConfig) -> Any:
    """The KerasTuner tuner of this search: state in `<folder>/tuner`, trials trained under `<folder>/trials`."""
    import keras
    import keras_tuner as kt

    from celeba.train import train

    folder = cfg.folder
    base = cfg.base()

    class CelebATuner(kt.Tuner):
        """One trial = one `celeba.train.train` run; its run card gives the objective."""

        def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
            trial_cfg = trial_config(base, trial.hyperparameters.values, folder / "trials", trial.trial_id)
            # A trial retried after a killed search continues its training from its last completed epoch.
            trial_cfg = dataclasses.replace(trial_cfg, resume=(folder / "trials" / trial_cfg.run_name).is_dir())
            log.info("trial %s: %s", trial.trial_id, json.dumps(searched_values(trial_cfg, cfg)))
            keras.backend.clear_session()
            started = time.perf_counter()
            try:
                card = train(trial_cfg)
            except _user_errors() as exc:  # bad input fails every trial alike: stop the search, say why
                raise kt.errors.FatalError(str(exc)) from exc
            scores = objective_values(card)
            log.info("trial %s: %s", trial.trial_id, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
            return scores | {"seconds": round(time.perf_counter() - started, 1)}

        def on_trial_end(self, trial: Any) -> None:
            super().on_trial_end(trial)
            if trial.status not in ("COMPLETED", "RUNNING"):
                reason = (trial.message or "").strip().splitlines()
                log.warning("trial %s %s: %s", trial.trial_id, trial.status.lower(), reason[-1] if reason else "?")
            if not is_worker():
                write_report(cfg, self.oracle.trials.values())

    quiet = io.StringIO()  # KerasTuner prints "Reloading Tuner from ..." on stdout; the CLI alone prints there
    with contextlib.redirect_stdout(quiet):
        tuner = CelebATuner(make_oracle(cfg), directory=str(folder), project_name=PROJECT, overwrite=False)
    for line in quiet.getvalue().splitlines():
        log.info("%s", line)
    if hasattr(tuner.oracle, "_retry_queue"):
        _retry_orphans(tuner.oracle)
    return tuner


def _retry_orphans(oracle: Any) -> None:
    """A kill between KerasTuner's writing of a new trial's file and of the oracle's state leaves a trial RUNNING
    that the oracle does not know as ongoing: it would never finish and would still count against --max-trials.
    Queue it for a retry as KerasTuner does with the trials it knew were in flight."""
    queued = set(oracle._retry_queue) | {t.trial_id for t in oracle.ongoing_trials.values()}
    for trial_id, trial in oracle.trials.items():
        if trial.status == "RUNNING" and trial_id not in queued:
            log.info("trial %s was in flight when the search stopped: it runs again", trial_id)
            oracle._retry_queue.append(trial_id)
            if trial_id not in oracle.start_order:
                oracle.start_order.append(trial_id)


# --------------------------------------------------------------------------- the search folder


@contextlib.contextmanager
def search_lock(folder: Path) -> Iterator[None]:
    """One process per search folder (KerasTuner's state is not safe against two); distributed runs share it."""
    import fcntl

    if "KERASTUNER_ORACLE_IP" in os.environ:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".tune.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise CelebADataError(
                f"{folder}: another `celeba tune` is running this search (process {handle.read().strip() or '?'}); "
                "wait for it, or give this one another --name"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def settings(cfg: TuneConfig) -> dict[str, Any]:
    """What must not change when a search is resumed (--max-trials may grow)."""
    base = {k: v for k, v in cfg.base().to_json().items() if k not in ("name", "models_dir", "resume")}
    return {
        "algorithm": cfg.algorithm,
        "objective": cfg.objective,
        "space": search_space(cfg).get_config(),
        **({"max_epochs": cfg.max_epochs, "factor": cfg.factor} if cfg.algorithm == "hyperband" else {}),
        "base": base,
    }


def start_or_resume(cfg: TuneConfig) -> None:
    """`--no-resume` clears the folder's search; a resumed search must have been started with the same settings."""
    folder = cfg.folder
    record = folder / "search.json"
    if not cfg.resume:
        for name in (PROJECT, "trials"):
            shutil.rmtree(folder / name, ignore_errors=True)
        for name in ("trials.csv", "search.png", "best.json", "search.json"):
            (folder / name).unlink(missing_ok=True)
    current = json.loads(json.dumps(settings(cfg), default=str))
    if record.is_file():
        before = json.loads(record.read_text())
        old_base = before.get("base", {})
        changed = sorted(k for k in current.keys() | before.keys() if k != "base" and current.get(k) != before.get(k))
        changed += sorted(
            "--" + k.replace("_", "-")
            for k in current["base"].keys() | old_base.keys()
            if current["base"].get(k) != old_base.get(k)
        )
        if changed:
            raise ConfigError(
                f"--resume: {folder} holds a search started with other settings ({', '.join(changed)}); "
                "run it with the same flags, give this one another --name, or start it over with --no-resume"
            )
    else:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(record) as tmp:
            tmp.write_text(json.dumps(current, indent=2) + "\n")


def searched_values(trial_cfg: TrainConfig, cfg: TuneConfig) -> dict[str, Any]:
    """The trial's values of the hyper-parameters the search varies (epochs always: Hyperband's budget)."""
    names = [n for n in SPACE if n in cfg.searched() or n == "epochs"]
    return {n: getattr(trial_cfg, n) for n in names}


def trial_rows(cfg: TuneConfig, trials: Sequence[Any] | Any) -> Any:
    """trials.csv's table: one row per trial of the oracle, in trial order."""
    import pandas as pd

    base = cfg.base()
    rows = []
    for trial in sorted(trials, key=lambda t: (len(t.trial_id), t.trial_id)):
        values = trial.hyperparameters.values
        trial_cfg = trial_config(base, values, cfg.folder / "trials", trial.trial_id)
        metrics = {
            name: trial.metrics.get_last_value(name) if trial.metrics.exists(name) else None
            for name in ("average", "worst", "balanced", "seconds", cfg.objective)
        }
        card = Path(trial_cfg.models_dir) / f"{trial_cfg.run_name}.json"
        row = {
            "trial": trial.trial_id,
            "status": trial.status,
            "objective": metrics[cfg.objective],
            **{k: metrics[k] for k in ("average", "worst", "balanced", "seconds")},
            **searched_values(trial_cfg, cfg),
            **{k.removeprefix("tuner/"): values[k] for k in ("tuner/bracket", "tuner/round") if k in values},
            "card": str(card) if card.is_file() else "",
        }
        rows.append(row)
    table = pd.DataFrame(rows, columns=None if rows else list(SCORE_COLUMNS))
    if "unfreeze" in table:  # whole layer counts; empty (None) is the whole backbone
        table["unfreeze"] = table["unfreeze"].astype("Int64")
    return table


def best_row(table: Any) -> Any | None:
    """The completed trial with the highest objective (the first of equals), or None."""
    done = table[(table["status"] == "COMPLETED") & table["objective"].notna()] if len(table) else table
    if not len(done):
        return None
    return done.loc[done["objective"].astype(float).idxmax()]


def best_card(cfg: TuneConfig, row: Any) -> Any:
    """The best trial's run card, made replayable: `celeba train --config best.json` trains its configuration
    as `<name>-best` in --models-dir on the full partitions (the search's subset limits are dropped)."""
    from celeba.runcard import RunCard

    card = RunCard.load(Path(row["card"]))
    trial_config = dict(card.config)
    card.config = trial_config | {
        "name": f"{cfg.run_name}-best",
        "models_dir": str(cfg.models_dir),
        "resume": False,
        **dict.fromkeys(SUBSET_FLAGS),
    }
    card.extra["tune"] = {
        "search": str(cfg.folder),
        "trial": row["trial"],
        "objective": cfg.objective,
        "value": float(row["objective"]),
        "trial_card": str(row["card"]),
        "search_subset": {k: trial_config.get(k) for k in SUBSET_FLAGS},
        "note": "config is the best trial's without the search's subset limits; model, data and validation "
        "metrics are the trial's",
    }
    return card


def plot_search(table: Any, path: Path, objective: str, title: str) -> Path:
    """Objective per trial (dots; failed trials as crosses at the bottom) and the best so far (a step line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from celeba.plots import save

    fig, ax = plt.subplots(figsize=(6.5, 3.6), layout="constrained")
    number = [int(t) for t in table["trial"]] if len(table) else []
    values = table["objective"].astype(float) if len(table) else []
    done = [(n, v) for n, v in zip(number, values) if math.isfinite(v)]
    if done:
        xs, ys = zip(*done)
        ax.plot(xs, ys, "o", color="tab:blue", label=f"trial {objective}")
        best = [max(ys[: i + 1]) for i in range(len(ys))]
        ax.step(xs, best, where="post", color="tab:orange", label="best so far")
        failed = [n for n, v in zip(number, values) if not math.isfinite(v)]
        if failed:
            ax.plot(failed, [min(ys)] * len(failed), "x", color="tab:red", label="failed")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no completed trial yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {objective}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if 0 < len(number) <= 20:
        ax.set_xticks(sorted(set(number)))
    with atomic_path(path) as tmp:
        save(fig, tmp)
    return path


def write_report(cfg: TuneConfig, trials: Sequence[Any] | Any) -> dict[str, Any]:
    """trials.csv, search.png and best.json of the trials so far, each written atomically."""
    folder = cfg.folder
    table = trial_rows(cfg, list(trials))
    with atomic_path(folder / "trials.csv") as tmp:
        table.to_csv(tmp, index=False)
    done = int((table["status"] == "COMPLETED").sum()) if len(table) else 0
    title = f"{cfg.run_name}: {cfg.algorithm} search, {done} of {len(table)} trials completed"
    plot_search(table, folder / "search.png", cfg.objective, title)
    row = best_row(table)
    best = None
    if row is not None and row["card"]:
        best = best_card(cfg, row).save(folder / "best.json")
    elif row is not None:
        log.warning("trial %s: its run card is not in %s (a worker's folder?): no best.json", row["trial"], folder)
    return {"table": table, "csv": folder / "trials.csv", "plot": folder / "search.png", "best": best, "row": row}


# --------------------------------------------------------------------------- the command


@dataclass
class TuneResult:
    folder: Path
    table: Any  # pandas.DataFrame: trials.csv
    csv: Path
    plot: Path
    best: Path | None  # best.json
    best_row: Any | None  # the best trial's row
    worker: bool = False  # a distributed worker: the chief writes the reports


def tune(cfg: TuneConfig) -> TuneResult:
    """Run (or resume) the search; returns where its reports are."""
    import keras_tuner as kt

    folder = cfg.folder
    with search_lock(folder):
        if not is_worker():
            start_or_resume(cfg)
        tuner = make_tuner(cfg)
        log.info(
            "search %s: %s over %s, objective %s%s",
            folder,
            cfg.algorithm,
            ", ".join(cfg.searched()),
            cfg.objective,
            f", {cfg.max_trials} trials" if cfg.algorithm != "hyperband" else "",
        )
        try:
            tuner.search(verbose=0)
        except kt.errors.FatalError as exc:
            if isinstance(exc.__cause__, _user_errors()):
                raise exc.__cause__ from None
            raise
        if is_worker():
            return TuneResult(folder, None, folder / "trials.csv", folder / "search.png", None, None, worker=True)
        report = write_report(cfg, tuner.oracle.trials.values())
    return TuneResult(folder, report["table"], report["csv"], report["plot"], report["best"], report["row"])
