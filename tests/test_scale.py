"""Training at scale: augmentation lives only in the training graph, and the multi-worker strategy."""

from __future__ import annotations

import keras
import numpy as np

from celeba.data import load_image, load_index, split
from celeba.evaluate import predict
from celeba.model import load_model
from celeba.train import with_augmentation

RANDOM_LAYERS = (keras.layers.RandomFlip, keras.layers.RandomRotation, keras.layers.RandomTranslation,
                 keras.layers.RandomZoom, keras.layers.RandomBrightness, keras.layers.RandomContrast)


def test_saved_model_has_no_augmentation_and_predict_is_a_plain_model_call(tiny_model, sample_dir):
    model, labels = load_model(tiny_model)  # trained with augmentation on (the default)
    layers = list(model._flatten_layers(include_self=False, recursive=True))
    assert layers and not [layer.name for layer in layers if isinstance(layer, RANDOM_LAYERS)]
    rows = split(load_index(sample_dir), "test", 8)
    x = np.stack([load_image(path, 64).numpy() for path in rows["path"]])
    direct = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(predict(model, rows, labels, 64, batch_size=4), direct, atol=1e-5)


def test_training_wrapper_is_the_model_at_inference_and_augments_in_training(tiny_model, sample_dir):
    model, _ = load_model(tiny_model)
    trainer = with_augmentation(model, seed=0)
    rows = split(load_index(sample_dir), "test", 4)
    x = np.stack([load_image(path, 64).numpy() for path in rows["path"]])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(trainer(x, training=False)),
                                  keras.ops.convert_to_numpy(model(x, training=False)))
    augment = trainer.layers[0]
    assert augment.name == "augment"
    assert not np.allclose(keras.ops.convert_to_numpy(augment(x, training=True)), x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augment(x, training=False)), x)
