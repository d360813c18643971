"""The training losses of the multi-label sigmoid head: plain, class-weighted, focal, masked and Group DRO BCE.

A label a source does not know (UTKFace has no CelebA-style attributes) is NaN in `y_true`; the masked loss
leaves it out, so several sources train one model. Group DRO (Sagawa et al. 2020) weights the groups' losses
online, the worst group most.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops
from sklearn.utils.class_weight import compute_class_weight


def class_balanced_weights(y: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-label (positive, negative) weights, sklearn's 'balanced' rule: n / (2 * count), over known values."""
    pos, neg = [], []
    for column in np.asarray(y, dtype=np.float32).T:
        column = column[np.isfinite(column)]
        if len(np.unique(column)) < 2:
            pos.append(1.0)  # one class only: nothing to balance
            neg.append(1.0)
            continue
        w_neg, w_pos = compute_class_weight("balanced", classes=np.array([0, 1]), y=column.astype(int))
        pos.append(float(w_pos))
        neg.append(float(w_neg))
    return pos, neg


@keras.saving.register_keras_serializable(package="celeba")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """BCE with a weight per label and class, so a rare class (e.g. not Young) counts as much as a common one.

    Registered and serializable: `keras.models.load_model` restores it once `celeba.losses` is imported.
    """

    def __init__(
        self,
        pos_weights: Sequence[float],
        neg_weights: Sequence[float],
        label_smoothing: float = 0.0,
        name: str = "weighted_bce",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.pos_weights = [float(w) for w in pos_weights]
        self.neg_weights = [float(w) for w in neg_weights]
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true = ops.cast(y_true, y_pred.dtype)
        per_element = ops.binary_crossentropy(smoothed(y_true, self.label_smoothing), y_pred)
        weights = y_true * ops.convert_to_tensor(self.pos_weights, y_pred.dtype) + (
            1.0 - y_true
        ) * ops.convert_to_tensor(self.neg_weights, y_pred.dtype)
        return ops.mean(per_element * weights, axis=-1)

    def get_config(self) -> Any:
        return {
            **super().get_config(),
            "pos_weights": self.pos_weights,
            "neg_weights": self.neg_weights,
            "label_smoothing": self.label_smoothing,
        }


def smoothed(y: Any, label_smoothing: float) -> Any:
    """Targets moved towards 0.5 (Keras' own rule, as in `BinaryCrossentropy(label_smoothing=...)`)."""
    return y * (1.0 - label_smoothing) + 0.5 * label_smoothing if label_smoothing else y


def masked_bce(y_true: Any, y_pred: Any, gamma: float = 0.0, label_smoothing: float = 0.0) -> Any:
    """(per-element BCE, mask): NaN labels are unknown, their BCE is 0 and their mask 0. `gamma` > 0: focal.

    `label_smoothing` softens the targets as Keras' own BCE and focal losses do (the focal factor included).
    """
    known = ops.logical_not(ops.isnan(ops.cast(y_true, y_pred.dtype)))
    y = smoothed(ops.where(known, ops.cast(y_true, y_pred.dtype), ops.zeros_like(y_pred)), label_smoothing)
    bce = ops.binary_crossentropy(y, y_pred)
    if gamma:
        p_true = y * y_pred + (1.0 - y) * (1.0 - y_pred)
        bce = bce * ops.power(1.0 - p_true, gamma)
    mask = ops.cast(known, y_pred.dtype)
    return bce * mask, mask


@keras.saving.register_keras_serializable(package="celeba")
class MaskedBinaryCrossentropy(keras.losses.Loss):
    """BCE over the known labels only (NaN = unknown): the loss of several sources, each lacking some labels.

    Per sample, the mean over its known labels (a sample that knows none adds 0). Optional class weights
    (weighted-bce) and focal `gamma`, so every loss of the project trains on several sources.
    """

    def __init__(
        self,
        pos_weights: Sequence[float] | None = None,
        neg_weights: Sequence[float] | None = None,
        gamma: float = 0.0,
        label_smoothing: float = 0.0,
        name: str = "masked_bce",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.pos_weights = None if pos_weights is None else [float(w) for w in pos_weights]
        self.neg_weights = None if neg_weights is None else [float(w) for w in neg_weights]
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        per_element, mask = masked_bce(y_true, y_pred, self.gamma, self.label_smoothing)
        if self.pos_weights is not None and self.neg_weights is not None:
            y = ops.where(mask > 0, ops.cast(y_true, y_pred.dtype), ops.zeros_like(y_pred))
            per_element = per_element * (
                y * ops.convert_to_tensor(self.pos_weights, y_pred.dtype)
                + (1.0 - y) * ops.convert_to_tensor(self.neg_weights, y_pred.dtype)
            )
        return ops.sum(per_element, axis=-1) / ops.maximum(ops.sum(mask, axis=-1), 1.0)

    def get_config(self) -> Any:
        return {
            **super().get_config(),
            "pos_weights": self.pos_weights,
            "neg_weights": self.neg_weights,
            "gamma": self.gamma,
            "label_smoothing": self.label_smoothing,
        }


@keras.saving.register_keras_serializable(package="celeba")
class GroupDROLoss(keras.losses.Loss):
    """Online Group DRO (Sagawa et al. 2020, Algorithm 1) over the groups of some of the labels themselves.

    A group is a combination of the values of `group_labels` (indices into the labels; Male x Young: 4 groups),
    read from `y_true`, so no extra input is needed. Each batch: the mean loss of every group present;
    q_g <- q_g * exp(step * loss_g), normalised; the loss is sum_g q_g loss_g. The paper's generalisation
    adjustment `C / sqrt(n_g)` is added to each group's loss (`adjustment`, with the groups' train counts).
    The paper needs strong L2 or early stopping for the worst group to generalise: train adds weight decay
    and keeps the epoch with the best worst-group validation accuracy.
    """

    def __init__(
        self,
        group_labels: Sequence[int],
        step: float = 0.01,
        adjustment: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        name: str = "group_dro",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, reduction="sum", **kwargs)
        self.group_labels = [int(i) for i in group_labels]
        self.step = float(step)
        self.label_smoothing = float(label_smoothing)
        n = 2 ** len(self.group_labels)
        self.adjustment = [0.0] * n if adjustment is None else [float(a) for a in adjustment]
        self.q = keras.Variable(np.full(n, 1.0 / n, np.float32), trainable=False, name="group_dro_q")

    def group_ids(self, y_true: Any) -> Any:
        y = ops.cast(ops.nan_to_num(ops.take(y_true, self.group_labels, axis=-1), nan=0.0) > 0.5, "int32")
        return ops.sum(y * ops.convert_to_tensor([1 << i for i in range(len(self.group_labels))], "int32"), axis=-1)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        per_element, mask = masked_bce(y_true, y_pred, label_smoothing=self.label_smoothing)
        per_sample = ops.sum(per_element, axis=-1) / ops.maximum(ops.sum(mask, axis=-1), 1.0)
        onehot = ops.one_hot(self.group_ids(y_true), len(self.adjustment), dtype=y_pred.dtype)  # (batch, groups)
        counts = ops.sum(onehot, axis=0)
        group_loss = ops.sum(onehot * per_sample[:, None], axis=0) / ops.maximum(counts, 1.0)
        adjusted = group_loss + ops.convert_to_tensor(self.adjustment, y_pred.dtype)
        present = ops.cast(counts > 0, y_pred.dtype)
        q = self.q * ops.exp(self.step * ops.stop_gradient(adjusted) * present)
        q = q / ops.sum(q)
        self.q.assign(ops.cast(q, self.q.dtype))
        return ops.sum(ops.stop_gradient(q) * adjusted * present)

    def get_config(self) -> Any:
        return {
            **super().get_config(),
            "group_labels": self.group_labels,
            "step": self.step,
            "adjustment": self.adjustment,
            "label_smoothing": self.label_smoothing,
        }

    @classmethod
    def from_config(cls, config: Any) -> Any:
        config.pop("reduction", None)
        return cls(**config)


LOSSES = ("bce", "weighted-bce", "focal", "group-dro")


def dro_adjustment(y_train: np.ndarray, group_labels: Sequence[int], c: float) -> list[float]:
    """The paper's generalisation adjustment C / sqrt(n_g) per group (0 for an empty group)."""
    y = np.nan_to_num(np.asarray(y_train, np.float32)[:, list(group_labels)]) > 0.5
    keys = (y * (1 << np.arange(y.shape[1]))).sum(axis=1)
    counts = np.bincount(keys, minlength=2 ** len(group_labels))
    return [c / np.sqrt(n) if n else 0.0 for n in counts]


def make_loss(
    name: str,
    y_train: np.ndarray | None = None,
    group_labels: Sequence[int] = (),
    dro_step: float = 0.01,
    dro_c: float = 0.0,
    label_smoothing: float = 0.0,
) -> keras.losses.Loss:
    """The training loss by its CLI name; weighted BCE needs the training labels, Group DRO its group labels.

    Training labels with unknown values (NaN: several sources) get the masked form of the loss. Every loss
    smooths its targets by `label_smoothing` the same way (towards 0.5).
    """
    masked = y_train is not None and bool(np.isnan(np.asarray(y_train, np.float32)).any())
    ls = label_smoothing
    if name == "group-dro":
        if not group_labels:
            raise ValueError("group-dro needs --groups: the labels whose combinations are the groups")
        adjustment = dro_adjustment(y_train, group_labels, dro_c) if y_train is not None else None
        return GroupDROLoss(group_labels, dro_step, adjustment, label_smoothing=ls)
    if masked and name in ("bce", "focal"):
        return MaskedBinaryCrossentropy(gamma=2.0 if name == "focal" else 0.0, label_smoothing=ls)
    if masked and name == "weighted-bce" and y_train is not None:
        return MaskedBinaryCrossentropy(*class_balanced_weights(y_train), label_smoothing=ls)
    if name == "bce":
        return keras.losses.BinaryCrossentropy(label_smoothing=ls, name="bce")
    if name == "weighted-bce":
        if y_train is None:
            raise ValueError("weighted-bce needs the training labels to compute class weights")
        return WeightedBinaryCrossentropy(*class_balanced_weights(y_train), label_smoothing=ls)
    if name == "focal":  # down-weights easy examples, so the hard (often minority-cohort) ones drive training
        return keras.losses.BinaryFocalCrossentropy(gamma=2.0, label_smoothing=ls, name="focal")
    raise ValueError(f"unknown loss {name!r}; choose from {LOSSES}")


# --------------------------------------------------------------------------- metrics that skip unknown labels


@keras.saving.register_keras_serializable(package="celeba")
class MaskedBinaryAccuracy(keras.metrics.Mean):
    """Binary accuracy over the known labels only (NaN = unknown), for training on several sources."""

    def __init__(self, threshold: float = 0.5, name: str = "accuracy", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.threshold = float(threshold)

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        known = ops.logical_not(ops.isnan(ops.cast(y_true, "float32")))
        y = ops.where(known, ops.cast(y_true, "float32"), 0.0)
        correct = ops.cast(ops.equal(y > 0.5, ops.cast(y_pred, "float32") > self.threshold), "float32")
        return super().update_state(correct, sample_weight=ops.cast(known, "float32"))

    def get_config(self) -> Any:
        return {**super().get_config(), "threshold": self.threshold}


@keras.saving.register_keras_serializable(package="celeba")
class MaskedAUC(keras.metrics.AUC):
    """Per-label ROC-AUC over the known labels only (NaN = unknown)."""

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        known = ops.logical_not(ops.isnan(ops.cast(y_true, "float32")))
        y = ops.where(known, ops.cast(y_true, "float32"), 0.0)
        return super().update_state(y, y_pred, sample_weight=ops.cast(known, "float32"))
