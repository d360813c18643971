"""Reliability of training: kills during the backup write, a full disk, model + labels as one unit, run locks."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from celeba.checkpoint import AtomicBackup, history_epochs, save_atomic, trim_history
from celeba.model import ModelFileError, card_path, embedded_labels, load_model
from celeba.runcard import RunCardError

REPO = Path(__file__).resolve().parent.parent
TINY_TRAIN = [
    *("--weights", "none", "--image-size", "32", "--limit", "16", "--batch-size", "16"),  # one step per epoch
    *("--no-check-images", "--run-eagerly"),  # eager: no graph to trace, the same backups, kills and resumes
]


def _dense() -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.05), "mse")
    return model


X = np.random.default_rng(0).random((32, 4)).astype("float32")
Y = X.sum(axis=1, keepdims=True)


class Seen(keras.callbacks.Callback):
    """Records the epochs fit() runs and the weights it starts from."""

    def on_train_begin(self, logs=None):
        self.epochs, self.start = [], [w.copy() for w in self.model.get_weights()]

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_backup_keeps_the_previous_state_and_resumes_from_a_broken_newest(tmp_path):
    backup_dir = tmp_path / "backup"
    model = _dense()
    model.fit(X, Y, epochs=3, verbose=0, callbacks=[AtomicBackup(backup_dir)])
    assert [e for e, _ in AtomicBackup(backup_dir).backups()] == [3, 2]  # the newest and the previous one
    reference = _dense()
    reference.load_weights(backup_dir / "epoch-0002.weights.h5")

    (backup_dir / "epoch-0003.weights.h5").write_bytes(b"")  # what a kill mid-write leaves with Keras' backup
    (backup_dir / ".epoch-0004.tmp.weights.h5").write_bytes(b"")  # and a killed temporary write
    resumed, seen, backup = _dense(), Seen(), AtomicBackup(backup_dir)
    resumed.fit(X, Y, epochs=4, verbose=0, callbacks=[backup, seen])
    assert seen.epochs == [2, 3]  # epochs 0 and 1 are not repeated; epoch 2 (lost) is
    assert all(np.array_equal(a, b) for a, b in zip(seen.start, reference.get_weights()))
    assert backup.recovered["epochs_completed"] == 2 and backup.recovered["skipped"][0].endswith(
        "epoch-0003.weights.h5"
    )
    assert not (backup_dir / ".epoch-0004.tmp.weights.h5").exists()


def test_no_readable_backup_starts_over_from_the_initial_state(tmp_path):
    backup_dir = tmp_path / "backup"
    model = _dense()
    model.fit(X, Y, epochs=1, verbose=0, callbacks=[AtomicBackup(backup_dir)])
    only = backup_dir / "epoch-0001.weights.h5"
    only.write_bytes(only.read_bytes()[: only.stat().st_size // 2])  # truncated mid-file

    fresh, seen = _dense(), Seen()
    initial = [w.copy() for w in fresh.get_weights()]
    fresh.fit(X, Y, epochs=2, verbose=0, callbacks=[AtomicBackup(backup_dir), seen])
    assert seen.epochs == [0, 1]  # never worse than starting over...
    assert all(np.array_equal(a, b) for a, b in zip(seen.start, initial))  # ...and not from half-loaded weights


def test_a_full_disk_during_the_backup_keeps_the_last_good_one(tmp_path, monkeypatch):
    backup_dir = tmp_path / "backup"
    model = _dense()
    model.fit(X, Y, epochs=1, verbose=0, callbacks=[AtomicBackup(backup_dir)])
    good = (backup_dir / "epoch-0001.weights.h5").read_bytes()

    def full_disk(self, filepath, *args, **kwargs):
        Path(filepath).write_bytes(b"\0" * 100)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filepath))

    monkeypatch.setattr(keras.Model, "save_weights", full_disk)
    with pytest.raises(OSError) as caught:
        model.fit(X, Y, initial_epoch=1, epochs=2, verbose=0, callbacks=[AtomicBackup(backup_dir)])
    assert caught.value.errno == errno.ENOSPC
    assert sorted(p.name for p in backup_dir.iterdir()) == ["epoch-0001.weights.h5"]  # no stray temporary file
    assert (backup_dir / "epoch-0001.weights.h5").read_bytes() == good


def test_history_rows_of_epochs_to_repeat_are_trimmed(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\r\n0,1.0\r\n1,0.9\r\n2,0.8\r\n")
    trim_history(path, 2)
    assert path.read_bytes() == b"epoch,loss\r\n0,1.0\r\n1,0.9\r\n" and history_epochs(path) == 2


# --------------------------------------------------------------------------- model and labels: one unit


def test_labels_live_inside_the_model_file_and_must_agree_with_the_card(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="sigmoid")])
    path = tmp_path / "m.keras"
    save_atomic(model, path, labels=["Smiling", "Eyeglasses"])
    assert embedded_labels(path) == ("Smiling", "Eyeglasses")
    assert load_model(path)[1] == ("Smiling", "Eyeglasses")  # no card needed

    card_path(path).write_text(json.dumps({"config": {"labels": ["Male", "Young"]}}))  # an older model's card
    with pytest.raises(ModelFileError, match=r"m.keras: the model's labels \['Smiling', 'Eyeglasses'\] disagree"):
        load_model(path)


def test_old_models_without_embedded_labels_use_the_card(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = tmp_path / "old.keras"
    model.save(path)
    card_path(path).write_text(json.dumps({"config": {"labels": ["Male", "Young"]}}))
    assert load_model(path)[1] == ("Male", "Young")
    card_path(path).write_text("{not json")
    with pytest.raises(RunCardError, match=r"old.json: unreadable run card"):
        load_model(path)
    card_path(path).unlink()
    with pytest.raises(ModelFileError, match=r"old.json: run card not found, and .*old.keras holds no labels"):
        load_model(path)


def test_a_corrupt_model_file_is_not_reported_as_missing(tmp_path):
    path = tmp_path / "broken.keras"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelFileError, match=r"broken.keras: not a Keras model file, or a truncated one"):
        load_model(path)


# --------------------------------------------------------------------------- a real SIGKILL


def _train_cmd(models: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from celeba.cli import train_main; train_main()",
        *TINY_TRAIN,
        "--models-dir",
        str(models),
        "--name",
        "k",
        *extra,
    ]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_sigkill_during_the_backup_write_then_resume_finishes(tmp_path, caplog):
    models, marker = tmp_path / "models", tmp_path / "paused"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(
            _train_cmd(models, "--epochs", "3"),
            cwd=tmp_path,
            stdout=log,
            stderr=log,
            env=_env(CELEBA_TEST_PAUSE_IN_BACKUP=f"2:{marker}"),
        )
        deadline = time.monotonic() + 900
        while not marker.exists():
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "training never reached the backup of epoch 2"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of writing the backup of the second epoch
        assert proc.wait(60) == -signal.SIGKILL
    backup = models / "k" / "backup" / "full"
    assert (backup / ".epoch-0002.tmp.weights.h5").is_file()  # the half-written file the kill left
    assert (backup / "epoch-0001.weights.h5").is_file() and not (models / "k.keras").exists()

    from celeba.cli import train_main

    caplog.set_level(logging.INFO, logger="celeba")
    with pytest.raises(SystemExit) as exit_info:  # the resume runs in this process: the kill needed one of its own
        train_main(_train_cmd(models, "--epochs", "3", "--resume")[3:])
    assert exit_info.value.code == 0
    assert "resume: recovered the state after 1 completed epoch(s)" in caplog.text
    assert not backup.exists()  # the phase is saved; its backup is gone
    card = json.loads((models / "k.json").read_text())
    assert card["epochs_trained"] == 3  # all epochs, across both runs
    epochs = (models / "k" / "history.csv").read_text().splitlines()[1:]
    assert [line.split(",")[0] for line in epochs] == ["0", "1", "2"]
    assert load_model(models / "k.keras")[1] == ("Male", "Young")


# --------------------------------------------------------------------------- two trainings of one --name


def test_a_second_training_of_the_same_name_is_refused_and_the_first_keeps_its_folder(tmp_path):
    from celeba.checkpoint import RunLockedError, run_lock
    from celeba.config import TrainConfig
    from celeba.train import train

    models = tmp_path / "models"
    (models / "same").mkdir(parents=True)
    (models / "same" / "history.csv").write_text("epoch,loss\n0,1.0\n")  # the first run's files
    # The first training holds the lock in another process, as it would.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\n"
            "from celeba.train import run_lock\n"
            "with run_lock(Path(sys.argv[1]), 'same'):\n    print('locked', flush=True)\n"
            "    time.sleep(600)\n",
            str(models),
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=r"another training of --name same is running \(process \d+\)"):
            train(TrainConfig(models_dir=models, name="same", weights="none", image_size=32, limit=4, epochs=1))
        assert (models / "same" / "history.csv").read_text() == "epoch,loss\n0,1.0\n"  # not cleared
    finally:
        holder.kill()
        holder.wait()
    with run_lock(models, "same"):  # released when its holder died
        pass


# --------------------------------------------------------------------------- a full disk


FULL_DISK_AT_EPOCH_2 = """
import errno, os, sys
import keras
from celeba.cli import train_main

real_save_weights = keras.Model.save_weights

def save_weights(self, filepath, *args, **kwargs):
    if "epoch-0002" in str(filepath):  # the backup of the second epoch meets a full disk half-way
        with open(filepath, "wb") as f:
            f.write(bytes(4096))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filepath))
    return real_save_weights(self, filepath, *args, **kwargs)

keras.Model.save_weights = save_weights
train_main(sys.argv[1:])
"""


@pytest.mark.slow
def test_a_full_disk_ends_training_with_one_error_line_and_keeps_the_last_backup(tmp_path):
    models = tmp_path / "models"
    args = [*TINY_TRAIN, "--epochs", "2", "--models-dir", str(models), "--name", "k"]
    run = _run([sys.executable, "-c", FULL_DISK_AT_EPOCH_2, *args], tmp_path)
    assert run.returncode == 2, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "epoch-0002.tmp.weights.h5: no space left on device" in errors[0]
    backup = models / "k" / "backup" / "full"
    assert sorted(p.name for p in backup.iterdir()) == ["epoch-0001.weights.h5"]  # no half-written file left
    import h5py

    with h5py.File(backup / "epoch-0001.weights.h5") as f:  # complete and readable
        assert len(f.keys()) > 0
    assert not (models / "k.keras").exists()


# --------------------------------------------------------------------------- a label with one class


def test_a_label_with_one_class_trains_and_prints_its_summary(tmp_path, capsys):
    """Bald is 0 on the first 8 validation images: its validation ROC-AUC is undefined (null in the card). The
    summary line used to crash on it (`TypeError ... NoneType.__format__`, exit 1) after the model was saved."""
    from celeba.cli import train_main

    with pytest.raises(SystemExit) as exit_info:
        train_main(
            [
                *TINY_TRAIN[:4],
                "--limit",
                "8",
                "--batch-size",
                "8",
                *TINY_TRAIN[8:],
                "--epochs",
                "1",
                "--labels",
                "Bald",
                "--loss",
                "weighted-bce",
                "--models-dir",
                str(tmp_path),
                "--name",
                "one",
            ]
        )
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, err[-3000:]
    assert json.loads((tmp_path / "one.json").read_text())["validation_metrics"]["Bald"]["roc_auc"] is None
    assert re.search(r"validation: Bald \d\.\d{3} \(ROC-AUC n/a: one class in validation\);", out), out


@pytest.mark.slow
def test_a_real_full_disk_names_the_file_it_was_writing(tmp_path):
    """On a real 6 MB tmpfs the first model save fails; the line used to say `output:` instead of the file."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a real full file system needs a tmpfs mount, which needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        run = _run(_train_cmd(disk / "models", "--epochs", "2"), tmp_path)
        assert run.returncode == 2, run.stderr[-3000:]
        errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
        assert re.match(
            rf"error: {re.escape(str(disk / 'models'))}/\S+\.tmp\.\S+: no space left on device \(", errors[0]
        )
        assert not [p for p in (disk / "models").rglob(".*.tmp*")]  # no temporary file left
    finally:
        subprocess.run(["umount", str(disk)], check=False)
