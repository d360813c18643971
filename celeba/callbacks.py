"""Keras callbacks of a training besides checkpointing: worst-group validation accuracy (`val_worst_group`) and
training throughput per phase."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

log = logging.getLogger(__name__)


class GroupValidation(keras.callbacks.Callback):
    """Worst-group validation accuracy at every epoch end, as `val_worst_group` in the logs (for selecting the
    epoch: Group DRO's worst group generalises only with early stopping on it, Sagawa et al. 2020).

    A group is a value combination of `groups` (labels of the model), e.g. Male x Young; every label's accuracy
    is taken in every group with at least one known truth, and the worst of them is reported.
    """

    def __init__(self, target: keras.Model, dataset: Any, y_val: np.ndarray, group_index: Sequence[int]):
        super().__init__()
        self.target, self.dataset, self.y = target, dataset, np.asarray(y_val, np.float32)
        self.keys = group_keys(self.y, group_index)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        probs = self.target.predict(self.dataset, verbose=0)
        worst, mean = worst_group_accuracy(self.y, probs, self.keys)
        if logs is not None:
            logs["val_worst_group"], logs["val_mean_group"] = worst, mean


def group_keys(y: np.ndarray, group_index: Sequence[int]) -> np.ndarray:
    """One integer per row for the value combination of the group labels (unknown counts as 0)."""
    values = np.nan_to_num(np.asarray(y, np.float32)[:, list(group_index)]) > 0.5
    return (values * (1 << np.arange(values.shape[1]))).sum(axis=1)


def worst_group_accuracy(y: np.ndarray, probs: np.ndarray, keys: np.ndarray) -> tuple[float, float]:
    """(worst, mean) accuracy over every (label, group) cell with known truth."""
    cells = []
    for j in range(y.shape[1]):
        for key in np.unique(keys):
            rows = (keys == key) & np.isfinite(y[:, j])
            if rows.any():
                cells.append(float(((probs[rows, j] >= 0.5) == (y[rows, j] > 0.5)).mean()))
    return (min(cells), float(np.mean(cells))) if cells else (float("nan"), float("nan"))


class Throughput(keras.callbacks.Callback):
    """Seconds spent in the training batches of each epoch (validation excluded), for images/second."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch_seconds: list[float] = []
        self._start = 0.0
        self._train_end: float | None = None  # when the epoch's validation began, if it ran

    def on_epoch_begin(self, epoch: Any, logs: Any = None) -> None:
        self._start = time.perf_counter()
        self._train_end = None

    def on_test_begin(self, logs: Any = None) -> None:
        self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch: Any, logs: Any = None) -> None:
        self.epoch_seconds.append((self._train_end or time.perf_counter()) - self._start)


def images_per_s(images_per_epoch: int, epoch_seconds: Sequence[float]) -> float:
    return round(images_per_epoch * len(epoch_seconds) / sum(epoch_seconds), 1) if epoch_seconds else 0.0
