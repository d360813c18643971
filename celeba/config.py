"""The one typed configuration of a training run; every field is a command-line flag."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from celeba.data import SAMPLE_DIR


class ConfigError(ValueError):
    """A flag value that cannot work; the message reads "--flag: why". The CLI prints it as `error: ...`, exit 2."""


@dataclass
class TrainConfig:
    """Defaults train on the embedded sample in a few minutes on 2 CPU cores."""

    data_dir: Path = SAMPLE_DIR  # a CelebA folder (official or Kaggle layout); default: the embedded sample
    labels: tuple[str, ...] = ("Male", "Young")  # any of the 40 CelebA attributes
    loss: Literal["bce", "weighted-bce", "focal"] = "bce"  # weighted-bce: class-balanced weights; focal: gamma 2
    sampling: Literal["natural", "balanced"] = "natural"  # balanced: every label cohort equally often per batch
    weights: str = "imagenet"  # 'imagenet' (downloaded by Keras), 'none' (from scratch) or a local .h5 file
    image_size: int = 128  # square input side; ImageNet weights exist for 96, 128, 160, 192, 224
    batch_size: int = 32  # per replica
    epochs: int = 3  # total epochs, frozen-backbone epochs included
    freeze_epochs: int = 1  # head-only epochs before fine-tuning (skipped with --weights none)
    learning_rate: float = 1e-3  # peak of the cosine schedule (head phase; fine-tuning uses a tenth)
    dense_units: int = 128  # width of the head's hidden layer
    dropout: float = 0.3  # dropout before the sigmoid layer
    augment: bool = True  # flip, rotation, shift, scale, brightness, contrast on training batches
    cache: bool = False  # keep decoded images in memory after the first epoch
    check_images: bool = True  # decode every image once up front and skip unreadable ones
    limit: int | None = None  # at most N images from every partition (quick runs)
    train_limit: int | None = None  # overrides --limit for the train partition
    val_limit: int | None = None  # overrides --limit for the validation partition
    seed: int = 42  # seeds Python, NumPy and TensorFlow
    models_dir: Path = Path("models")
    name: str | None = None  # run name; default mobilenetv2-<loss>
    resume: bool = False  # continue an interrupted run from its last epoch
    mixed_precision: bool = False  # float16 compute on GPU; ignored on CPU

    @property
    def run_name(self) -> str:
        return self.name or f"mobilenetv2-{self.loss}"

    def partition_limit(self, partition: str) -> int | None:
        specific = {"train": self.train_limit, "validation": self.val_limit}.get(partition)
        return specific if specific is not None else self.limit

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}


@dataclass
class EvalConfig:
    """Evaluate a saved model on a CelebA partition: per-label metrics and accuracy per cohort."""

    model: Path = Path("models/mobilenetv2-bce.keras")  # a saved .keras model with its run card beside it
    data_dir: Path = SAMPLE_DIR  # a CelebA folder; default: the embedded sample
    partition: Literal["train", "validation", "test"] = "test"  # which official partition
    limit: int | None = None  # only the first N images of the partition
    batch_size: int = 64  # images per prediction batch
    threshold: float = 0.5  # decision threshold on the probabilities
    out: Path | None = None  # default: reports/<model name>-<partition>/
    check_images: bool = True  # decode every image once up front and skip unreadable ones


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(scalar type, is_tuple) for the annotations the configs use."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin is tuple:
        return typing.get_args(annotation)[0], True
    return annotation, False


def field_comments(cls: type) -> dict[str, str]:
    """`name: type = default  # comment` -> {name: comment}: the comment beside a field is its --help text."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        match = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if match:
            comments[match[1]] = match[2].strip()
    return comments


def parse_config(cls: type, argv: Sequence[str] | None = None, description: str | None = None):
    """Build an argparse parser from a config dataclass, so flags, defaults and help never drift apart."""
    hints = typing.get_type_hints(cls)
    helps = field_comments(cls)
    parser = argparse.ArgumentParser(description=description or cls.__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        text = helps.get(f.name, " ").replace("%", "%%")
        kind, many = _base_type(hints[f.name])
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=text)
        elif typing.get_origin(kind) is Literal:
            parser.add_argument(flag, choices=typing.get_args(kind), default=f.default, help=text)
        else:
            parser.add_argument(flag, type=kind, nargs="+" if many else None, default=f.default, help=text)
    values = vars(parser.parse_args(argv))
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
