"""`celeba tune`: a tiny real KerasTuner search on the embedded sample, its reports, best.json's replay, bad flags,
and a search killed mid-trial that resumes to the end without a lost or repeated trial."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from celeba.cli import _replay, tune_main
from celeba.config import REPO_ROOT, ConfigError, TrainConfig
from celeba.flags import parse_config
from celeba.runcard import RunCard
from celeba.tune import objective_values, search_space, trial_config
from celeba.tune_config import SPACE, TuneConfig, from_card

#: A search whose trials are tiny trainings (tests/conftest.py's tiny_config): random weights, 32 px, 16 images,
#: one eager epoch; three hyper-parameters that cost nothing to vary.
TINY = [
    "--weights", "none", "--image-size", "32", "--limit", "16", "--batch-size", "16", "--epochs", "1",
    "--run-eagerly", "--no-check-images", "--space", "learning_rate", "dropout", "augment",
]  # fmt: skip


def _exit_code(capsys, argv: list[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as caught:
        tune_main(argv)
    out, err = capsys.readouterr()
    return caught.value.code, out, err


@pytest.fixture(scope="module")
def tiny_search(tmp_path_factory) -> tuple[Path, list[str], str]:
    """Two Bayesian trials (its random initial points), run once through the command line in this process."""
    models = tmp_path_factory.mktemp("tune")
    argv = ["--models-dir", str(models), "--max-trials", "2", *TINY]
    out = io.StringIO()  # capsys is function-scoped
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as caught:
        tune_main(argv)
    assert caught.value.code == 0, out.getvalue()
    return models / "smoke-sample-tune", argv, out.getvalue()


def test_a_tiny_search_writes_a_row_per_trial_a_plot_and_the_best_card(tiny_search):
    folder, _, out = tiny_search
    table = pd.read_csv(folder / "trials.csv", dtype={"trial": str})
    assert list(table["trial"]) == ["0", "1"] and set(table["status"]) == {"COMPLETED"}
    assert list(table.columns[:7]) == ["trial", "status", "objective", "average", "worst", "balanced", "seconds"]
    assert {"learning_rate", "dropout", "augment", "epochs", "card"} <= set(table.columns)
    # The default objective: the mean of validation accuracy and worst-group accuracy, each averaged over labels.
    assert ((table["objective"] - (table["average"] + table["worst"]) / 2).abs() < 2e-4).all()
    for _, row in table.iterrows():
        card = RunCard.load(Path(row["card"]))
        assert card.config["learning_rate"] == pytest.approx(row["learning_rate"])
        assert objective_values(card)["score"] == pytest.approx(row["objective"])
    assert (folder / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = table.loc[table["objective"].idxmax()]
    assert f"best: trial {best['trial']}, score {best['objective']:.4f}" in out
    assert f"celeba train --config {folder / 'best.json'}" in out


def test_best_json_replays_through_train_config(tiny_search):
    folder, _, _ = tiny_search
    table = pd.read_csv(folder / "trials.csv", dtype={"trial": str})
    best = table.loc[table["objective"].idxmax()]
    card = json.loads((folder / "best.json").read_text())
    assert card["tune"]["trial"] == best["trial"] and card["tune"]["value"] == pytest.approx(best["objective"])
    assert card["validation_metrics"] == RunCard.load(Path(best["card"])).validation_metrics
    replayed = parse_config(TrainConfig, ["--config", str(folder / "best.json")], load_base=_replay)
    assert replayed.learning_rate == pytest.approx(best["learning_rate"])
    assert (replayed.dropout, replayed.augment, replayed.epochs) == (best["dropout"], best["augment"], 1)
    assert (replayed.weights, replayed.image_size, replayed.run_eagerly) == ("none", 32, True)  # the base config
    assert replayed.limit is None and card["tune"]["search_subset"]["limit"] == 16  # the full partitions
    assert replayed.models_dir == folder.parent and replayed.run_name.startswith("smoke-sample-tune-best")


def test_a_finished_search_run_again_trains_nothing_and_other_settings_are_refused(tiny_search, capsys):
    folder, argv, _ = tiny_search
    before = (folder / "trials.csv").read_text()
    code, out, err = _exit_code(capsys, argv)
    assert code == 0, err
    assert "2 of 2 trials completed" in out and (folder / "trials.csv").read_text() == before
    code, _, err = _exit_code(capsys, [*argv, "--objective", "worst"])
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: --resume: {folder} holds a search started with other settings (objective); run it with the same "
        "flags, give this one another --name, or start it over with --no-resume"
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-trials", "0"], "--max-trials: must be at least 1, got 0"),
        (["--objective", "loss"], "--objective: unknown objective 'loss'; choose from score, average, worst, balanced"),
        (["--factor", "1"], "--factor: must be at least 2, got 1"),
        (["--max-epochs", "0"], "--max-epochs: must be at least 1, got 0"),
        (["--space", "momentum"], f"--space: momentum; choose from {', '.join(SPACE)}"),
        (["--loss-choices", "hinge"], "--loss-choices: hinge; choose from bce, weighted-bce, focal, group-dro"),
        (["--image-sizes", "16"], "--image-sizes: each at least 32 (MobileNetV2's smallest input), got (16,)"),
        (
            ["--labels", "Smiling", "--groups", "Male"],
            "--groups: the objective 'score' needs groups among the --labels (Smiling); got Male",
        ),
        (["--config", "x.json"], "x.json: run card not found (it sits beside the model and gives its labels)"),
    ],
)  # fmt: skip
def test_bad_flags_are_one_error_line_and_exit_2(capsys, argv, message):
    code, out, err = _exit_code(capsys, argv)
    assert (code, out, err.strip().splitlines()) == (2, "", [f"error: {message}"])


def test_a_run_card_is_the_base_config_and_flags_still_override(tmp_path):
    card = tmp_path / "run.json"
    config = TrainConfig(image_size=48, learning_rate=0.005, name="someone", resume=True).to_json()
    card.write_text(json.dumps({"model": "run.keras", "config": config}))
    base = from_card(card)
    assert (base.image_size, base.learning_rate, base.name, base.resume) == (48, 0.005, None, True)
    cfg = parse_config(TuneConfig, ["--config", str(card), "--max-trials", "3"], load_base=from_card)
    assert (cfg.image_size, cfg.max_trials, cfg.base().learning_rate) == (48, 3, 0.005)


def test_the_space_follows_the_flags():
    hyperband = search_space(TuneConfig(algorithm="hyperband", weights="none"))
    assert [hp.name for hp in hyperband.space] == [
        "learning_rate",
        "schedule",
        "dropout",
        "weight_decay",
        "label_smoothing",
        "image_size",
        "augment",
        "augment_strength",
        "loss",
    ]  # no epochs (hyperband's budget), nothing of a pretrained backbone's phases (freeze, fine-tuning rate, depth)
    bayesian = search_space(TuneConfig(image_sizes=(96, 160), loss_choices=("bce", "focal"), max_epochs=4))
    values = {hp.name: hp for hp in bayesian.space}
    assert set(values) == set(SPACE)
    assert (values["image_size"].values, values["loss"].values) == ([96, 160], ["bce", "focal"])
    assert (values["epochs"].min_value, values["epochs"].max_value, values["freeze_epochs"].max_value) == (1, 4, 2)
    assert values["schedule"].values == ["cosine", "one-cycle"] and 0 in values["unfreeze"].values
    assert values["finetune_learning_rate"].sampling == "log" and 0.0 in values["label_smoothing"].values
    with pytest.raises(ConfigError, match="--space: nothing left to search"):
        search_space(TuneConfig(algorithm="hyperband", space=("epochs",)))


def test_a_trials_config_is_the_base_with_its_values(tmp_path):
    base = TrainConfig(learning_rate=0.001, epochs=3, limit=100)
    values = {"learning_rate": 0.0002, "dropout": 0.30000000000000004, "tuner/epochs": 5, "tuner/bracket": 1}
    cfg = trial_config(base, values, tmp_path, "07")
    assert (cfg.learning_rate, cfg.dropout, cfg.epochs, cfg.limit) == (0.0002, 0.3, 5, 100)
    assert (cfg.name, cfg.models_dir, cfg.resume) == ("trial-07", tmp_path, False)
    # unfreeze 0 is KerasTuner's stand-in for "the whole backbone" (a Choice cannot hold None)
    assert trial_config(base, {"unfreeze": 0}, tmp_path, "08").unfreeze is None
    deep = trial_config(base, {"unfreeze": 60, "schedule": "one-cycle", "label_smoothing": 0.1}, tmp_path, "09")
    assert (deep.unfreeze, deep.schedule, deep.label_smoothing) == (60, "one-cycle", 0.1)


def test_objective_values_average_over_labels():
    card = RunCard(
        model="m.keras",
        config={"labels": ["Male", "Young"]},
        validation_metrics={"Male": {"accuracy": 0.9}, "Young": {"accuracy": 0.8}},
        extra={
            "validation_groups": {"Male": {"worst": 0.7, "balanced": 0.85}, "Young": {"worst": 0.5, "balanced": 0.7}}
        },
    )
    assert objective_values(card) == {"average": 0.85, "worst": 0.6, "balanced": 0.775, "score": 0.725}


# --------------------------------------------------------------------------- killed and resumed


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the search ended before {path} appeared: {process.stderr.read()}"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout:.0f} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_search_killed_mid_trial_resumes_to_all_trials_without_duplicates(tmp_path):
    argv = [sys.executable, "-m", "celeba", "tune", "--models-dir", str(tmp_path), "--algorithm", "random"]
    argv += ["--max-trials", "3", *TINY]
    folder = tmp_path / "smoke-sample-tune"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    search = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(folder / "trials" / "trial-1", search)  # trial 0 reported, trial 1 training
        os.kill(search.pid, signal.SIGKILL)
        search.wait(30)
    finally:
        if search.poll() is None:
            search.kill()
        search.communicate()
    killed = json.loads((folder / "tuner" / "trial_1" / "trial.json").read_text())
    assert killed["status"] == "RUNNING"
    assert list(pd.read_csv(folder / "trials.csv", dtype={"trial": str})["trial"]) == ["0"]

    resumed = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "3 of 3 trials completed" in resumed.stdout
    table = pd.read_csv(folder / "trials.csv", dtype={"trial": str})
    assert list(table["trial"]) == ["0", "1", "2"] and set(table["status"]) == {"COMPLETED"}
    again = json.loads((folder / "tuner" / "trial_1" / "trial.json").read_text())
    assert again["hyperparameters"]["values"] == killed["hyperparameters"]["values"]  # the same trial, run again
    assert RunCard.load(folder / "trials" / "trial-1.json").config["learning_rate"] == pytest.approx(
        table.loc[1, "learning_rate"]
    )
    assert (folder / "best.json").is_file()


def test_trials_csv_writes_layer_counts_as_whole_numbers(tmp_path):
    """unfreeze is a layer count or the whole backbone (empty): never 30.0 beside a missing value."""
    import keras_tuner as kt

    from celeba.tune import trial_rows

    cfg = TuneConfig(space=("unfreeze",), out=tmp_path)
    trials = []
    for trial_id, depth in (("0", 0), ("1", 30)):
        hp = search_space(cfg).copy()
        hp.values["unfreeze"] = depth
        trials.append(kt.engine.trial.Trial(hp, trial_id=trial_id, status="COMPLETED"))
    text = trial_rows(cfg, trials).to_csv(index=False)
    assert [line.split(",")[-2] for line in text.splitlines()[1:]] == ["", "30"]
