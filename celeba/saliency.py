"""Grad-CAM over the last convolutional block: which part of the face drove a label's score."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from celeba.model import FEATURE_LAYER


def gradcam_model(model: keras.Model) -> keras.Model:
    """Image -> (last conv activations, predictions); build once and reuse for many images."""
    return keras.Model(model.inputs, [model.get_layer(FEATURE_LAYER).output, model.output])


def gradcam(
    model: keras.Model,
    images: np.ndarray,
    label_index: int,
    towards: bool | np.ndarray = True,
    grad_model: keras.Model | None = None,
) -> np.ndarray:
    """Heatmaps (N, H, W) in [0, 1] at the input size, for a batch of preprocessed images.

    towards=True explains what raises the label's probability, False what lowers it; a boolean array chooses per
    image. Images do not interact at inference, so one gradient pass serves a batch of mixed directions.
    """
    grad_model = grad_model or gradcam_model(model)
    images = tf.convert_to_tensor(images, tf.float32)
    up = tf.broadcast_to(tf.convert_to_tensor(towards, tf.bool), images.shape[:1])
    with tf.GradientTape() as tape:
        features, probs = grad_model(images, training=False)
        score = tf.where(up, probs[:, label_index], 1.0 - probs[:, label_index])
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(features * weights, axis=-1))
    cam = tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=(1, 2), keepdims=True))
    cam = tf.image.resize(cam[..., None], images.shape[1:3], method="bilinear")[..., 0]
    return cam.numpy()


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] heatmap (jet colour map) over an RGB image in [0, 255]; uint8 out."""
    import matplotlib

    colours = matplotlib.colormaps["jet"](heatmap)[..., :3] * 255.0
    return np.clip((1 - alpha) * np.asarray(image, np.float32) + alpha * colours, 0, 255).astype(np.uint8)
