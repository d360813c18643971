"""The MobileNetV2 model: shapes, scaling inside the model, weights options, freezing."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from celeba import model as model_lib
from celeba.model import WeightsError, build_model, embedding_model, set_backbone_trainable


@pytest.fixture(scope="module")
def small():
    return build_model(3, 64, "none")


def test_outputs_are_probabilities_per_label(small):
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    y = small.predict(x, verbose=0)
    assert y.shape == (2, 3) and ((0 <= y) & (y <= 1)).all()
    assert embedding_model(small).predict(x, verbose=0).shape == (2, 1280)


def test_pixel_scaling_lives_in_the_model(small):
    scale = keras.Model(small.inputs, small.get_layer("scale").output)
    out = scale.predict(np.array([[[[0, 127.5, 255]]]], np.float32).repeat(64, 1).repeat(64, 2), verbose=0)
    np.testing.assert_allclose(out[0, 0, 0], [-1, 0, 1], atol=1e-6)


def test_freezing_leaves_only_the_head_trainable(small):
    set_backbone_trainable(small, False)
    names = {w.path.split("/")[0] for w in small.trainable_weights}
    assert names == {"head_dense", "head_bn", "predictions"}
    set_backbone_trainable(small, True, freeze_batchnorm=True)
    trainable = {w.path.split("/")[0] for w in small.trainable_weights}
    assert "Conv1" in trainable and "bn_Conv1" not in trainable


def test_unfreezing_the_last_layers_leaves_the_early_ones_frozen(small):
    backbone = model_lib.backbone_layers(small)
    set_backbone_trainable(small, True, freeze_batchnorm=False, last=10)
    assert [layer.trainable for layer in backbone] == [False] * (len(backbone) - 10) + [True] * 10
    set_backbone_trainable(small, True, freeze_batchnorm=False, last=len(backbone) + 5)  # more than there are
    assert all(layer.trainable for layer in backbone)


def test_local_weights_file_is_loaded(tmp_path):
    source = keras.applications.MobileNetV2(input_shape=(64, 64, 3), include_top=False, weights=None)
    path = tmp_path / "backbone.weights.h5"
    source.save_weights(path)
    model = build_model(2, 64, str(path))
    np.testing.assert_array_equal(model.get_layer("Conv1").get_weights()[0], source.get_layer("Conv1").get_weights()[0])


def test_missing_weights_file_says_what_to_pass(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found.*--weights imagenet, none, or a local"):
        build_model(2, 64, str(tmp_path / "nope.h5"))


def test_imagenet_download_failure_fails_fast_with_advice(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: Name or service not known")

    monkeypatch.setattr("keras.src.applications.mobilenet_v2.file_utils.get_file", offline)
    with pytest.raises(
        WeightsError, match=r"could not download.*--weights PATH/TO/.*_1.0_96_no_top.h5.*--weights none"
    ):
        build_model(2, 96, "imagenet")


def test_imagenet_needs_a_supported_size():
    with pytest.raises(WeightsError, match="exist only for sizes"):
        build_model(2, 100, "imagenet")


def test_load_model_needs_labels_or_card(tmp_path, small):
    path = tmp_path / "bare.keras"
    small.save(path)
    with pytest.raises(model_lib.ModelFileError, match="run card not found, and .*bare.keras holds no labels"):
        model_lib.load_model(path)
    _, labels = model_lib.load_model(path, labels=["Male", "Young", "Smiling"])
    assert labels == ("Male", "Young", "Smiling")
    with pytest.raises(ValueError, match="3 outputs"):
        model_lib.load_model(path, labels=["Male"])
    with pytest.raises(FileNotFoundError, match="model file not found"):
        model_lib.load_model(tmp_path / "missing.keras")
