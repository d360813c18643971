"""The Tensorleap integration's per-sample numbers: Keras losses unreduced, and every label's confusion kinds.

Pure numpy over `celeba.metrics`; leap_binder.py registers them with code-loader. No
`from __future__ import annotations`, like leap_binder.py.
"""

from typing import Any

import numpy as np
from code_loader.contract.enums import MetricDirection

from celeba import metrics


def per_sample(loss: Any, gt: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """A Keras loss, unreduced: one value per sample (the platform hands float16, Keras wants float32)."""
    values = loss.call(np.asarray(gt, np.float32), np.asarray(prediction, np.float32))
    return np.asarray(values, dtype=np.float32)


# Per label: 0/1 per sample; conditional rates (NaN where the condition does not hold, so a cohort's mean is
# its recall, miss rate, specificity, fall-out); confidence: the probability's distance from the threshold,
# scaled to [0, 1] (|2p - 1| at 0.5); margin: the same, signed + when right and - when wrong, so the most
# negative margins are the confident mistakes.
METRIC_DIRECTIONS = {
    "accuracy": MetricDirection.Upward,
    "tp": MetricDirection.Upward,
    "tn": MetricDirection.Upward,
    "fp": MetricDirection.Downward,
    "fn": MetricDirection.Downward,
    "recall": MetricDirection.Upward,
    "miss_rate": MetricDirection.Downward,
    "specificity": MetricDirection.Upward,
    "fall_out": MetricDirection.Downward,
    "confidence": MetricDirection.Upward,
    "margin": MetricDirection.Upward,
}


def label_metrics(gt: np.ndarray, prediction: np.ndarray, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """{kind: (samples, labels) float32} for every kind of METRIC_DIRECTIONS."""
    gt, prediction = np.asarray(gt, np.float32), np.asarray(prediction, np.float32)
    values = metrics.sample_confusion(gt, prediction, threshold)
    positive = gt >= 0.5
    values["recall"] = np.where(positive, values["tp"], np.nan)
    values["miss_rate"] = np.where(positive, values["fn"], np.nan)
    values["specificity"] = np.where(positive, np.nan, values["tn"])
    values["fall_out"] = np.where(positive, np.nan, values["fp"])
    signed = (prediction - threshold) / np.where(prediction >= threshold, 1 - threshold, threshold)
    values["confidence"] = np.abs(signed)
    values["margin"] = np.where(positive, signed, -signed)
    return {kind: values[kind].astype(np.float32) for kind in METRIC_DIRECTIONS}


# Insights (the platform's search for clusters where a metric is bad) for the kinds that say something of their
# own; tp/tn/fp/fn, miss_rate and fall_out mirror accuracy, recall and specificity and would repeat their findings.
METRIC_INSIGHTS = {"accuracy", "recall", "specificity", "confidence", "margin"}


def single(array: np.ndarray) -> np.ndarray:
    """Drop the batch axis the platform and the integration test add."""
    array = np.asarray(array)
    return array[0] if array.ndim in (2, 4) else array
