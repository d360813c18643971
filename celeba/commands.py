"""What each command does once its config is parsed: call the pipeline, then print its result.

The pipeline modules return data and print nothing; every line a command prints on success is written here.
`celeba.cli` holds the table of commands and the runner around them (parsing, logging, exit codes).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _train(cfg: Any) -> int:
    from celeba.train import train

    card = train(cfg)
    accuracy = ", ".join(
        f"{label} {_number(m['accuracy'])} (ROC-AUC {_number(m['roc_auc'], 'n/a: one class in validation')})"
        for label, m in card.validation_metrics.items()
    )
    print(f"saved {card.model} and its run card {Path(card.model).with_suffix('.json')}")
    print(
        f"validation: {accuracy}; {card.epochs_trained} epochs in {card.time_s:.0f} s, "
        f"{card.train_images_per_s} training images/s"
    )
    return 0


def _number(value: float | None, missing: str = "n/a") -> str:
    """A metric with 3 decimals; `missing` for one a card holds as null (NaN in JSON: e.g. the ROC-AUC of a
    label with one class)."""
    return missing if value is None or value != value else f"{value:.3f}"


def _evaluate(cfg: Any) -> int:
    import pandas as pd

    from celeba.evaluate import default_out, evaluate, write_evaluation

    result = evaluate(cfg)
    out = default_out(cfg)
    write_evaluation(result, out)
    folder = result.folder  # --images: a labelled folder of photos
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 160):
        source = result.source if folder else f"{cfg.partition} ({result.n} images)"  # a folder's says "(N photos)"
        print(f"\n{cfg.model} on {source}\n")
        if folder:
            faces = result.summary()["faces"]
            print("\n".join(f"{label}: {how}" for label, how in result.derivations.items()), "\n")
            print("photos per face status: " + ", ".join(f"{k} {v}" for k, v in faces.items()), "\n")
        print(result.metrics.to_string(), "\n")
        title = "accuracy per group, worst first\n" if folder else "accuracy per cohort\n"
        print(title + result.table.to_string(), "\n")
    files = "groups.csv, faces.csv" if folder else "cohorts.csv"
    print(f"wrote {out}/metrics.json, metrics.csv, {files}, predictions.csv")
    return 0


def _analyze(cfg: Any) -> int:
    from celeba.analyze import analyze, markdown_table

    result = analyze(cfg)
    print("\n" + "\n".join(result["findings"]) + f"\n\n{markdown_table(result['summary'])}\n")
    print(f"wrote {result['report']} and {sum(map(len, result['figures'].values()))} figures in {result['out']}")
    return 0


def _predict(cfg: Any) -> int:
    from celeba.predict import results_table, run_predict

    results, errors, labels = run_predict(cfg)
    if cfg.output_format == "json":
        print(json.dumps(results, indent=2))
    elif cfg.output_format == "csv":
        results_table(results, labels).to_csv(sys.stdout, index=False, float_format="%.4f")
    else:
        table = results_table(results, labels)
        print(table.to_string(index=False, float_format="{:.3f}".format) if len(table) else "(no faces)")
    faceless = [r["file"] for r in results if not r["faces"]]
    warned = sum(bool(face.get("warnings")) for r in results for face in r["faces"])
    if warned:
        print(
            f"{warned} face(s) outside what the model was trained on (see the warnings column); "
            "their scores are less reliable",
            file=sys.stderr,
        )
    if faceless:
        print(
            f"no face found in {len(faceless)} image(s): {', '.join(faceless[:5])}"
            f"{' ...' if len(faceless) > 5 else ''}",
            file=sys.stderr,
        )
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    return 2 if errors else 0


def _serve(cfg: Any) -> int:
    from celeba.serve import serve

    serve(cfg)
    return 0


def _export(cfg: Any) -> int:
    from celeba.export import export, parity_line

    failed = 0
    for done in export(cfg):
        print(
            f"wrote {done.model} ({done.size_bytes / 1e6:.2f} MB; Keras model {done.keras_size_bytes / 1e6:.2f} MB) "
            f"and its card {done.card}"
        )
        print(parity_line(done.parity))
        failure = done.failure
        if failure:
            print(f"error: {failure}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _prepare(cfg: Any) -> int:
    from celeba.data import fs_path
    from celeba.prepare import prepare

    summary = prepare(cfg)
    print(
        f"wrote {summary['images']} images at {summary['image_size']} px to {fs_path(cfg.out)} "
        f"({', '.join(f'{p}: {n}' for p, n in summary['partitions'].items())}; "
        f"{sum(len(s) for s in summary['shards'].values())} shards)"
    )
    return 0


def _repair(cfg: Any) -> int:
    from celeba.repair import repair

    result = repair(cfg)
    print(f"\nrepair data: {result.data}; groups {' x '.join(result.groups)}")
    for r in result.repairs:
        print(
            f"\n{r.label} (C={r.strength:g}), held-out half: average {r.before.average:.3f} -> {r.after.average:.3f}, "
            f"worst group {r.before.worst:.3f} -> {r.after.worst:.3f}, "
            f"group-balanced {r.before.balanced:.3f} -> {r.after.balanced:.3f}"
        )
        table = r.before.table[["n", "accuracy", "low", "high"]].join(
            r.after.table[["accuracy", "low", "high"]], rsuffix=" after"
        )
        print(table.to_string(float_format="{:.3f}".format))
    print(f"\nwrote {result.model} and its run card {result.card}")
    return 0


def _tune(cfg: Any) -> int:
    from celeba.tune import tune

    result = tune(cfg)
    if result.worker:
        print(f"worker {os.environ.get('KERASTUNER_TUNER_ID')}: no trials left; the chief writes {result.folder}")
        return 0
    table = result.table
    done = int((table["status"] == "COMPLETED").sum()) if len(table) else 0
    print(f"{cfg.algorithm} search in {result.folder}: {done} of {len(table)} trials completed")
    if result.best_row is not None:
        row = result.best_row
        print(
            f"best: trial {row['trial']}, {cfg.objective} {row['objective']:.4f} "
            f"(average {row['average']:.4f}, worst group {row['worst']:.4f})"
        )
    print(f"wrote {result.csv}, {result.plot}" + (f" and {result.best}" if result.best else ""))
    if result.best:
        print(f"train it on the full partitions: celeba train --config {result.best}")
    return 0


def _tune_base(path: Path) -> Any:
    from celeba.tune_config import from_card

    return from_card(path)


def _config(module: str, name: str) -> Callable[[], type]:
    def load() -> type:
        import importlib

        return getattr(importlib.import_module(module), name)

    return load


def _replay(path: Path) -> Any:
    """The config a run card replays (named `<name>-replay`); TensorFlow quiet first: the card's data folder is
    checked through tf.io.gfile."""
    from celeba.runcard import RunCard
    from celeba.runtime import quiet_tensorflow

    quiet_tensorflow()
    return RunCard.load(path).replay_config(path)


def _check_replay(cfg: Any, card: Path) -> None:
    from celeba.runcard import check_replay

    check_replay(cfg, card)
