"""Shared fixtures: the embedded CelebA sample and one tiny model trained on it once per test session."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")  # code-loader would otherwise try to phone home
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from celeba.data import SAMPLE_DIR  # noqa: E402


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 64 px MobileNetV2 (random init) trained 1 epoch on 32 sample images; saved .keras with its run card."""
    from celeba.config import TrainConfig
    from celeba.train import train

    models = tmp_path_factory.mktemp("models")
    cfg = TrainConfig(
        weights="none",
        image_size=64,
        epochs=1,
        limit=32,
        batch_size=16,
        models_dir=models,
        name="tiny",
        check_images=False,
    )
    train(cfg)
    return models / "tiny.keras"
