"""Plain and class-weighted BCE: values, weights from the training labels, and serialization."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest

from celeba.losses import WeightedBinaryCrossentropy, class_balanced_weights, make_loss

Y = np.array([[1, 0], [1, 1], [1, 0], [0, 0]], np.float32)
P = np.array([[0.9, 0.2], [0.6, 0.7], [0.3, 0.1], [0.2, 0.6]], np.float32)


def test_balanced_weights_follow_n_over_two_counts():
    pos, neg = class_balanced_weights(Y)
    # Label 0: 3 positives of 4 -> 4/(2*3) and 4/(2*1); label 1: 1 positive -> 4/(2*1), 4/(2*3).
    np.testing.assert_allclose(pos, [4 / 6, 2.0])
    np.testing.assert_allclose(neg, [2.0, 4 / 6])
    assert class_balanced_weights(np.ones((5, 1))) == ([1.0], [1.0])  # one class only: unweighted


def test_unit_weights_equal_keras_bce():
    weighted = WeightedBinaryCrossentropy([1.0, 1.0], [1.0, 1.0])
    plain = make_loss("bce")
    np.testing.assert_allclose(float(weighted(Y, P)), float(plain(Y, P)), rtol=1e-5)


def test_weighted_value_matches_numpy():
    pos, neg = [2.0, 0.5], [0.5, 3.0]
    expected = -(Y * np.log(P) * pos + (1 - Y) * np.log(1 - P) * neg).mean(axis=1).mean()
    np.testing.assert_allclose(float(WeightedBinaryCrossentropy(pos, neg)(Y, P)), expected, rtol=1e-4)


@pytest.mark.parametrize("name", ["bce", "weighted-bce", "focal"])
def test_label_smoothing_is_keras_rule_for_every_loss_and_every_form(name):
    """Plain and masked (several sources) forms smooth alike: y(1-s) + s/2, the rule of Keras' own BCE."""
    plain = make_loss(name, Y, label_smoothing=0.2)
    with_unknown = Y.copy()
    with_unknown[0, 1] = np.nan
    masked = make_loss(name, with_unknown, label_smoothing=0.2)
    masked_none = make_loss(name, with_unknown)
    if name != "weighted-bce":  # (its class weights are counted over the known labels, so they differ)
        rows = slice(1, None)  # rows without an unknown label: the masked loss equals the plain one there
        np.testing.assert_allclose(float(masked(Y[rows], P[rows])), float(plain(Y[rows], P[rows])), rtol=1e-5)
    assert float(masked(with_unknown, P)) != pytest.approx(float(masked_none(with_unknown, P)))
    if name == "bce":
        soft = Y * 0.8 + 0.1
        expected = -(soft * np.log(P) + (1 - soft) * np.log(1 - P)).mean()
        np.testing.assert_allclose(float(plain(Y, P)), expected, rtol=1e-4)
    if name == "weighted-bce":  # the class weights read the true labels, only the targets are softened
        pos, neg = class_balanced_weights(Y)
        soft = Y * 0.8 + 0.1
        bce = -(soft * np.log(P) + (1 - soft) * np.log(1 - P))
        expected = (bce * (Y * np.array(pos) + (1 - Y) * np.array(neg))).mean()
        np.testing.assert_allclose(float(plain(Y, P)), expected, rtol=1e-4)


def test_smoothed_group_dro_round_trips_its_config():
    loss = make_loss("group-dro", Y, group_labels=[0, 1], label_smoothing=0.1)
    assert type(loss).from_config(loss.get_config()).label_smoothing == 0.1


def test_make_loss_validates():
    assert isinstance(make_loss("weighted-bce", Y), WeightedBinaryCrossentropy)
    with pytest.raises(ValueError, match="needs the training labels"):
        make_loss("weighted-bce")
    with pytest.raises(ValueError, match="unknown loss 'dice'"):
        make_loss("dice")


def test_weighted_model_loads_without_custom_objects(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="sigmoid")(inputs))
    model.compile(optimizer="adam", loss=WeightedBinaryCrossentropy([1.5, 0.25], [0.75, 4.0]))
    path = tmp_path / "weighted.keras"
    model.save(path)
    # A fresh interpreter: only importing the package registers the loss.
    code = (
        f"import keras, celeba.losses; m = keras.models.load_model({str(path)!r}); "
        "print(type(m.loss).__name__, m.loss.pos_weights, m.loss.neg_weights)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("WeightedBinaryCrossentropy [1.5, 0.25] [0.75, 4.0]")


def test_focal_loss_weights_hard_examples_more_than_bce():
    focal, bce = make_loss("focal"), make_loss("bce")
    easy_true, easy_pred = np.array([[1.0]], np.float32), np.array([[0.95]], np.float32)
    hard_true, hard_pred = np.array([[1.0]], np.float32), np.array([[0.3]], np.float32)
    ratio_easy = float(focal(easy_true, easy_pred)) / float(bce(easy_true, easy_pred))
    ratio_hard = float(focal(hard_true, hard_pred)) / float(bce(hard_true, hard_pred))
    assert ratio_easy < ratio_hard < 1  # (1 - p)^gamma shrinks the easy example's share far more
    restored = keras.losses.deserialize(keras.losses.serialize(focal))
    assert float(restored(hard_true, hard_pred)) == pytest.approx(float(focal(hard_true, hard_pred)))


def test_masked_bce_leaves_unknown_labels_out():
    from celeba.losses import MaskedBinaryCrossentropy

    y = Y.copy()
    y[0, 1] = y[3, 0] = np.nan
    masked = make_loss("bce", y)
    assert isinstance(masked, MaskedBinaryCrossentropy)
    known = ~np.isnan(y)
    per_element = -(np.nan_to_num(y) * np.log(P) + (1 - np.nan_to_num(y)) * np.log(1 - P))
    expected = np.mean([per_element[i, known[i]].mean() for i in range(len(y))])
    assert float(masked(y, P)) == pytest.approx(expected, rel=1e-4)
    complete = MaskedBinaryCrossentropy()(Y, P)
    assert float(complete) == pytest.approx(float(make_loss("bce")(Y, P)), rel=1e-5)  # nothing unknown: plain BCE
    with_weights = make_loss("weighted-bce", y)  # the class weights are counted over the known labels only
    assert isinstance(with_weights, MaskedBinaryCrossentropy) and np.isfinite(float(with_weights(y, P)))


def test_masked_loss_gradient_ignores_unknown_labels():
    import tensorflow as tf

    from celeba.losses import MaskedBinaryCrossentropy

    p = tf.Variable(P)
    y = Y.copy()
    y[:, 1] = np.nan
    with tf.GradientTape() as tape:
        value = MaskedBinaryCrossentropy()(y, p)
    grad = tape.gradient(value, p).numpy()
    assert np.isfinite(grad).all() and np.all(grad[:, 1] == 0) and np.all(grad[:, 0] != 0)


def test_group_dro_weights_move_to_the_worst_group():
    from celeba.losses import GroupDROLoss

    y = np.array([[0, 0], [0, 0], [1, 0], [1, 1]], np.float32)  # groups (Male, Young) keys 0, 0, 1, 3
    p = np.array([[0.1, 0.1], [0.1, 0.1], [0.2, 0.1], [0.9, 0.9]], np.float32)  # group 1 is badly wrong
    loss = make_loss("group-dro", y, group_labels=[0, 1], dro_step=1.0)
    assert isinstance(loss, GroupDROLoss)
    for _ in range(5):
        loss(y, p)
    q = loss.q.numpy()
    assert q.argmax() == 1 and q[1] > 0.5 and q.sum() == pytest.approx(1.0)
    assert q[2] < q[0] < q[1]  # the absent group (Male=0, Young=1) is never raised, the easy one less than the wrong
    with pytest.raises(ValueError, match="needs --groups"):
        make_loss("group-dro", y)
