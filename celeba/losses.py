"""Plain and class-weighted binary cross-entropy for the multi-label sigmoid head."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops
from sklearn.utils.class_weight import compute_class_weight


def class_balanced_weights(y: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-label (positive, negative) weights, sklearn's 'balanced' rule: n / (2 * count)."""
    pos, neg = [], []
    for column in np.asarray(y).T:
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
        self, pos_weights: Sequence[float], neg_weights: Sequence[float], name: str = "weighted_bce", **kwargs
    ):
        super().__init__(name=name, **kwargs)
        self.pos_weights = [float(w) for w in pos_weights]
        self.neg_weights = [float(w) for w in neg_weights]

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        per_element = ops.binary_crossentropy(y_true, y_pred)
        weights = y_true * ops.convert_to_tensor(self.pos_weights, y_pred.dtype) + (
            1.0 - y_true
        ) * ops.convert_to_tensor(self.neg_weights, y_pred.dtype)
        return ops.mean(per_element * weights, axis=-1)

    def get_config(self):
        return {**super().get_config(), "pos_weights": self.pos_weights, "neg_weights": self.neg_weights}


LOSSES = ("bce", "weighted-bce", "focal")


def make_loss(name: str, y_train: np.ndarray | None = None) -> keras.losses.Loss:
    """The training loss by its CLI name; weighted BCE needs the training labels."""
    if name == "bce":
        return keras.losses.BinaryCrossentropy(name="bce")
    if name == "weighted-bce":
        if y_train is None:
            raise ValueError("weighted-bce needs the training labels to compute class weights")
        return WeightedBinaryCrossentropy(*class_balanced_weights(y_train))
    if name == "focal":  # down-weights easy examples, so the hard (often minority-cohort) ones drive training
        return keras.losses.BinaryFocalCrossentropy(gamma=2.0, name="focal")
    raise ValueError(f"unknown loss {name!r}; choose from {LOSSES}")
