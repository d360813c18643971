"""What a training leaves on disk and how it resumes: atomic saves, epoch backups that survive a kill, the history
trimmed to the epochs kept, the best epoch's weights, and the lock that keeps two trainings of one run apart."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from celeba.data import CelebADataError
from celeba.files import atomic_path, remove_stale_temporaries
from celeba.model import embed_labels, without_optimizer_warnings

log = logging.getLogger(__name__)


#: Test-only hook: "<epoch>:<marker file>" makes the backup of that epoch stop half-written, create the marker
#: and wait, so that a test can SIGKILL a real training in the middle of the write.
PAUSE_IN_BACKUP_ENV = "CELEBA_TEST_PAUSE_IN_BACKUP"


def save_atomic(model: keras.Model, path: Path, labels: Sequence[str] | None = None) -> None:
    """Write to a temporary file and rename, so an interruption never leaves a half-written model.

    With `labels`, they are written into the `.keras` file itself, so model and labels are one unit.
    """
    with atomic_path(path) as tmp:
        if path.name.endswith(".weights.h5"):
            model.save_weights(tmp)
        else:
            model.save(tmp)
            if labels is not None:
                embed_labels(tmp, labels)


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))


def _pause_for_test(epoch: int, tmp: Path) -> None:
    spec = os.environ.get(PAUSE_IN_BACKUP_ENV, "")
    if spec.partition(":")[0] == str(epoch):
        size = tmp.stat().st_size
        with open(tmp, "r+b") as f:  # what a kill mid-write leaves: the first half of the file
            f.truncate(size // 2)
        Path(spec.partition(":")[2]).write_text(str(os.getpid()))
        time.sleep(600)


class AtomicBackup(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, made safe against a kill or a full disk during the epoch-end write.

    Keras rewrites one `latest.weights.h5` in place: a kill mid-write leaves a broken file and the run
    cannot resume. Here every backup goes to a temporary file renamed to `epoch-<n>.weights.h5`
    (n = epochs completed, so the file and its epoch are one unit) and the previous backup is kept.
    On resume the newest readable backup wins; broken ones are reported and skipped; with none the
    phase starts over from its initial state, so resuming is never worse than starting over.
    `history` (the CSVLogger's file) loses the rows of epochs that will be trained again.
    """

    def __init__(self, backup_dir: Path, history: Path | None = None, start_epoch: int = 0, keep: int = 2):
        super().__init__(str(backup_dir), delete_checkpoint=False)  # train() deletes it once the phase is saved
        self.dir, self.history, self.start_epoch, self.keep = Path(backup_dir), history, start_epoch, keep
        self.recovered: dict[str, Any] = {}
        self._restored = False

    def backups(self) -> list[tuple[int, Path]]:
        """(epochs completed, file), newest first."""
        found = []
        for path in self.dir.glob("epoch-*.weights.h5"):
            number = path.name.removeprefix("epoch-").removesuffix(".weights.h5")
            if number.isdigit():
                found.append((int(number), path))
        return sorted(found, reverse=True)

    def on_train_begin(self, logs: dict | None = None) -> None:
        if not self._restored:
            self.restore()

    def restore(self) -> None:
        """Load the newest readable backup into the model (or leave it as it is) and set the initial epoch."""
        self._restored = True
        self.model._initial_epoch = None  # Keras keeps it across fit() calls: a second phase would inherit it
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temporaries(self.dir):
            log.warning("resume: removed %s, a backup whose write was interrupted", stale)
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        variables = list(self.model.variables) + (list(optimizer.variables) if optimizer is not None else [])
        initial = [v.numpy() for v in variables]
        skipped = []
        for epoch, path in self.backups():
            try:
                with without_optimizer_warnings():
                    self.model.load_weights(path)
            except Exception as exc:  # h5py raises OSError, KeyError, ValueError... for a broken file
                log.warning(
                    "resume: %s is unreadable (%s: %s); trying the previous backup",
                    path,
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
                skipped.append(str(path))
                continue
            self.model._initial_epoch = epoch
            self.recovered = {"epochs_completed": epoch, "file": str(path), "skipped": skipped}
            log.info("resume: recovered the state after %d completed epoch(s) from %s", epoch, path)
            break
        else:
            for variable, value in zip(variables, initial):  # a broken file may have been partly loaded
                variable.assign(value)
            if skipped:
                log.warning("resume: no readable backup in %s; this phase starts over", self.dir)
            self.recovered = {"epochs_completed": None, "file": None, "skipped": skipped}
        if self.history is not None:
            trim_history(self.history, self.model._initial_epoch or self.start_epoch)

    def _save_model(self) -> None:
        epoch = self._current_epoch
        path = self.dir / f"epoch-{epoch:04d}.weights.h5"
        with atomic_path(path) as tmp:
            self.model.save_weights(tmp)
            _pause_for_test(epoch, tmp)
        for _, old in self.backups()[self.keep :]:
            old.unlink(missing_ok=True)


class _BeginFirst(keras.callbacks.Callback):
    """Runs `backup.on_train_begin` before the other callbacks (CSVLogger opens the history it trims),
    while `backup` itself sits later in the list for the epoch-end order."""

    def __init__(self, backup: AtomicBackup):
        super().__init__()
        self.backup = backup

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        self.backup.set_model(model)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.backup.restore()


def trim_history(path: Path, first_epoch: int) -> None:
    """Drop the CSV rows of epochs >= `first_epoch` (they will be trained again), in place.

    In place, not atomically: CSVLogger may already hold the file open for appending.
    """
    if not path.is_file():
        return
    with open(path, "r+", newline="") as f:
        lines = f.readlines()
        keep = lines[:1] + [
            line for line in lines[1:] if line.split(",")[0].isdigit() and int(line.split(",")[0]) < first_epoch
        ]
        if len(keep) < len(lines):
            f.seek(0)
            f.writelines(keep)
            f.truncate()


def history_epochs(path: Path) -> int:
    """Epochs recorded in a run's history.csv: the epochs the saved model has been trained for."""
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        return len({row["epoch"] for row in csv.DictReader(f)})


class BestCheckpoint(keras.callbacks.Callback):
    """Keep the model with the lowest validation loss across phases, written atomically.

    `target` is the model to save: the bare model, not the training wrapper with its augmentation.
    """

    def __init__(self, path: Path, target: keras.Model, monitor: str = "val_loss", higher_is_better: bool = False):
        super().__init__()
        self.path, self.target, self.monitor = path, target, monitor
        self.sign = -1.0 if higher_is_better else 1.0  # stored and compared as a value to minimise
        self.state_path = path.with_suffix(".json")
        self.best = json.loads(self.state_path.read_text())["best"] if self.state_path.is_file() else np.inf

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is not None and self.sign * value < self.best:
            self.best = self.sign * float(value)
            save_atomic(self.target, self.path)
            write_json_atomic({"best": self.best, "epoch": epoch}, self.state_path)


class RunLockedError(CelebADataError):
    """Another process is training a run of the same name."""


@contextlib.contextmanager
def run_lock(models_dir: Path, name: str) -> Iterator[Path]:
    """Hold an exclusive lock on the run `name` for the whole training (released when the process dies).

    Without it a second training of the same --name deletes the first one's run folder under it.
    The lock file sits beside the run folder (which a fresh run deletes) and is removed on release, with the
    models folder when this run created it and left it empty (a failed start leaves nothing behind).
    """
    import fcntl

    created = not models_dir.exists()
    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / f".{name}.lock"
    try:
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if not path.exists() or path.stat().st_ino != os.fstat(handle.fileno()).st_ino:
                    raise BlockingIOError  # its holder removed it in between: another run owns the new one
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "?"
                raise RunLockedError(
                    f"{models_dir / name}: another training of --name {name} is running "
                    f"(process {owner}); wait for it to finish or pick another --name"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            try:
                yield path
            finally:
                path.unlink(missing_ok=True)  # before unlocking: a waiting opener then sees a new inode
                fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        if created:
            with contextlib.suppress(OSError):
                models_dir.rmdir()  # only if empty
