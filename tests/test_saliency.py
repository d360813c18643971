"""Grad-CAM's direction on a model whose answer is known: channel 0 raises the score, channel 1 lowers it."""

from __future__ import annotations

import numpy as np
import pytest

from celeba.model import FEATURE_LAYER


@pytest.fixture(scope="module")
def two_channel_model():
    """image -> identity 1x1 conv -> relu (named like MobileNetV2's last conv activation) -> mean ->
    sigmoid(4 ch0 - 4 ch1). The conv has weights, so the tape records the path to the features."""
    import keras

    inputs = keras.Input((8, 8, 2))
    conv = keras.layers.Conv2D(2, 1, use_bias=False)
    features = keras.layers.Activation("relu", name=FEATURE_LAYER)(conv(inputs))
    conv.set_weights([np.eye(2, dtype=np.float32)[None, None]])
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    dense = keras.layers.Dense(1, activation="sigmoid")
    outputs = dense(pooled)
    dense.set_weights([np.array([[4.0], [-4.0]]), np.zeros(1)])
    return keras.Model(inputs, outputs)


def _left_right_image() -> np.ndarray:
    """Channel 0 bright on the left half (pushes the score up), channel 1 on the right half (pushes it down)."""
    image = np.zeros((1, 8, 8, 2), np.float32)
    image[0, :, :4, 0] = 1.0
    image[0, :, 4:, 1] = 1.0
    return image


def test_gradcam_towards_the_label_lights_what_raises_the_score(two_channel_model):
    from celeba.saliency import gradcam

    cam = gradcam(two_channel_model, _left_right_image(), 0, towards=True)[0]
    assert cam.shape == (8, 8) and cam.max() == pytest.approx(1.0)
    assert cam[:, :3].mean() > 0.9 and cam[:, 5:].max() < 0.05  # the left half, not the right


def test_gradcam_away_from_the_label_lights_what_lowers_it(two_channel_model):
    from celeba.saliency import gradcam

    cam = gradcam(two_channel_model, _left_right_image(), 0, towards=False)[0]
    assert cam[:, 5:].mean() > 0.9 and cam[:, :3].max() < 0.05  # the right half, not the left


def test_gradcam_with_a_direction_per_image_equals_one_pass_per_direction(two_channel_model):
    from celeba.saliency import gradcam

    rng = np.random.default_rng(0)
    images = np.concatenate([_left_right_image(), rng.uniform(0, 1, (3, 8, 8, 2)).astype(np.float32)])
    towards = np.array([True, False, True, False])
    mixed = gradcam(two_channel_model, images, 0, towards)
    up, down = (gradcam(two_channel_model, images, 0, direction) for direction in (True, False))
    np.testing.assert_allclose(mixed, np.where(towards[:, None, None], up, down), atol=1e-6)
    assert not np.allclose(up, down)  # the directions differ, so the choice per image is tested


def test_overlay_keeps_the_image_where_alpha_is_zero():
    from celeba.saliency import overlay

    image = np.full((4, 4, 3), 200, np.uint8)
    assert (overlay(image, np.zeros((4, 4)), alpha=0.0) == 200).all()
    hot = overlay(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4)), alpha=1.0)
    assert hot[0, 0, 0] > 100 and hot[0, 0, 2] < 50  # jet: 1.0 is red
