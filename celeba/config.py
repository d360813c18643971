"""Typed configuration: one dataclass per command; every field is a flag, its help lives in `field(metadata=...)`."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from celeba.data import SAMPLE_DIR
from celeba.population import AGE_BANDS

#: The repository root: defaults that name repository files resolve against it, so commands work from any cwd.
REPO_ROOT = Path(__file__).resolve().parent.parent
#: The model every model-consuming command uses by default (relative to the repository root).
#: CelebA + UTKFace, 160 px (docs/accuracy.md, docs/populations.md)
DEFAULT_MODEL = Path("models/multisource16k-bce-160b.keras")


#: A run name: one file name (`models/<name>.keras`, `models/<name>/`), never a path (`../x`) or a hidden file.
RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class ConfigError(ValueError):
    """A flag value that cannot work; the message reads "--flag: why". The CLI prints it as `error: ...`, exit 2."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def at_least(cfg: Any, minimum: int, *names: str) -> None:
    """Each named field is None (not given) or >= minimum."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not value >= minimum:
            raise ConfigError(f"{_flag(name)}: must be at least {minimum}, got {value!r}")


def positive(cfg: Any, *names: str, zero: bool = False) -> None:
    """Each named field is None or a finite number > 0 (>= 0 with `zero`); NaN and inf are refused."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not (math.isfinite(value) and (value >= 0 if zero else value > 0)):
            raise ConfigError(f"{_flag(name)}: must be a finite number {'>=' if zero else '>'} 0, got {value!r}")


def fraction(cfg: Any, *names: str, below_one: bool = False) -> None:
    """Each named field is None or in [0, 1] ([0, 1) with `below_one`)."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not (0 <= value < 1 if below_one else 0 <= value <= 1):
            raise ConfigError(f"{_flag(name)}: must be in [0, 1{')' if below_one else ']'}, got {value!r}")


def opt(default: Any, help: str, **metadata: Any) -> Any:
    """A config field with its --help text (and optionally `none=` the words for a None default, `positional=True`)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def resolve_model(path: Path) -> Path:
    """A model path as given, or, when it is relative and not found from here, the repository's copy.

    So `predict photo.jpg` finds the default model from any working directory; a missing file gets a clear error.
    """
    path = Path(path)
    if path.is_file() or path.is_absolute():
        return path
    if (REPO_ROOT / path).is_file():
        return REPO_ROOT / path
    hint = "the default model ships with the repository: is this a complete clone? " if path == DEFAULT_MODEL else ""
    raise FileNotFoundError(f"{path}: model file not found ({hint}pass --model PATH, or train one with `celeba train`)")


@dataclass
class TrainConfig:
    """Train a model. Defaults train on the embedded sample in a few minutes on 2 CPU cores."""

    data_dir: Path = opt(SAMPLE_DIR, "a CelebA folder (official or Kaggle layout)")
    labels: tuple[str, ...] = opt(("Male", "Young"), "any of the 40 CelebA attributes")
    loss: Literal["bce", "weighted-bce", "focal", "group-dro"] = opt(
        "bce",
        "bce; weighted-bce: class-balanced weights from the train partition; focal: focal loss, gamma 2;"
        " group-dro: online Group DRO over the groups of --groups (Sagawa et al. 2020)",
    )
    groups: tuple[str, ...] = opt(
        ("Male", "Young"), "labels whose value combinations are the groups (group-dro, worst-group selection)"
    )
    dro_step: float = opt(0.01, "group-dro: step size of the online group weights")
    dro_adjustment: float = opt(0.0, "group-dro: the paper's C in C/sqrt(n_group), added to each group's loss")
    weight_decay: float = opt(0.0, "decoupled weight decay (AdamW); group-dro needs strong regularisation")
    select_by: Literal["val_loss", "worst_group"] = opt(
        "val_loss", "which epoch is kept: lowest validation loss, or best worst-group validation accuracy"
    )
    sampling: Literal["natural", "balanced"] = opt(
        "natural", "natural: the data's own mix; balanced: every label cohort equally often per batch"
    )
    weights: str = opt("imagenet", "'imagenet' (downloaded by Keras once), 'none' (from scratch) or a local .h5 file")
    image_size: int = opt(128, "square input side in pixels; ImageNet weights exist for 96, 128, 160, 192, 224")
    batch_size: int = opt(32, "images per batch and replica")
    epochs: int = opt(3, "total epochs, frozen-backbone epochs included")
    freeze_epochs: int = opt(1, "head-only epochs before fine-tuning (none with --weights none)")
    learning_rate: float = opt(1e-3, "peak learning rate of the head phase (the whole run with --weights none)")
    finetune_learning_rate: float | None = opt(
        None, "peak learning rate of the fine-tuning phase", none="a tenth of --learning-rate"
    )
    unfreeze: int | None = opt(
        None, "fine-tuning trains only the backbone's last N layers, the rest stay frozen", none="the whole backbone"
    )
    schedule: Literal["cosine", "one-cycle"] = opt(
        "cosine",
        "per phase: cosine decays from the peak; one-cycle warms up linearly over the first 30% of the phase, then"
        " decays",
    )
    label_smoothing: float = opt(0.0, "targets move this far towards 0.5: y(1-s) + s/2 (soft targets for noisy labels)")
    dense_units: int = opt(128, "width of the head's hidden layer")
    dropout: float = opt(0.3, "dropout rate before the sigmoid layer")
    augment: bool = opt(True, "flip, rotation, shift, scale, brightness and contrast on training batches")
    augment_strength: float = opt(
        1.0, "scales the augmentation ranges (rotation, shift, scale, brightness, contrast); 1: the tested defaults"
    )
    cache: bool = opt(False, "keep decoded images in memory after the first epoch")
    check_images: bool = opt(True, "decode every image once up front and skip unreadable ones")
    limit: int | None = opt(None, "at most N images from every partition (quick runs)", none="all")
    train_limit: int | None = opt(None, "overrides --limit for the train partition", none="--limit")
    val_limit: int | None = opt(None, "overrides --limit for the validation partition", none="--limit")
    seed: int = opt(42, "seeds Python, NumPy and TensorFlow")
    photos: Path | None = opt(
        None, "a labelled photo folder to train on beside CelebA; faces found and aligned once, cached", none="none"
    )
    photos_labels_csv: Path | None = opt(None, "with --photos: CSV with file, labels and group columns", none="none")
    photos_pattern: str | None = opt(
        None, "with --photos, instead of a CSV: e.g. '{age}_{gender}_{race}_*.jpg'", none="none"
    )
    photos_derive: tuple[str, ...] = opt((), "with --photos: labels from other columns, e.g. 'Young=age<30'")
    photos_split: Path | None = opt(
        None, "with --photos: file,split CSV (train/validation/evaluation; scripts/split_photos.py)", none="none"
    )
    photos_weight: float | None = opt(
        None, "share of training images drawn from --photos (sample_from_datasets)", none="their share of the rows"
    )
    crops_dir: Path | None = opt(
        None, "where the photos' face crops are cached", none="~/.cache/celeba-attributes/crops/<folder>"
    )
    models_dir: Path = opt(Path("models"), "where <name>.keras, its run card <name>.json and the run folder go")
    name: str | None = opt(None, "run name", none="smoke-sample-<loss> on the embedded sample, else mobilenetv2-<loss>")
    resume: bool = opt(False, "continue an interrupted run from its last completed epoch")
    mixed_precision: bool = opt(False, "float16 compute on GPU; ignored (with a warning) on CPU")
    strategy: Literal["auto", "mirrored", "multiworker"] = opt(
        "auto", "auto: mirrored over the local GPUs if there are several; multiworker: the machines of TF_CONFIG"
    )
    startup_timeout: float = opt(
        300.0, "multiworker: seconds to wait for every task of TF_CONFIG to join before giving up"
    )
    run_eagerly: bool = opt(
        False,
        "run the training step eagerly instead of tracing a graph: tiny runs (tests, debugging) start in seconds,"
        " real ones train far slower",
    )

    def __post_init__(self) -> None:
        literal_choices(self)  # loss, select_by, sampling, strategy
        positive(self, "startup_timeout")
        at_least(self, 1, "batch_size", "epochs", "dense_units", "limit", "train_limit", "val_limit")
        at_least(self, 0, "freeze_epochs", "seed")
        at_least(self, 32, "image_size")  # MobileNetV2's smallest input
        positive(self, "learning_rate", "finetune_learning_rate", "dro_step", "augment_strength")
        at_least(self, 1, "unfreeze")
        fraction(self, "label_smoothing", below_one=True)
        positive(self, "dro_adjustment", "weight_decay", zero=True)
        fraction(self, "dropout", below_one=True)
        fraction(self, "photos_weight", below_one=True)
        if self.photos is not None and self.photos_split is None:
            raise ConfigError("--photos-split: needed with --photos (which photos train, tune and evaluate)")
        if self.photos is not None and (self.photos_labels_csv is None) == (self.photos_pattern is None):
            raise ConfigError("--photos: give exactly one of --photos-labels-csv FILE or --photos-pattern PATTERN")
        one_rule_per_label(self, "photos_derive")
        if self.name is not None and not RUN_NAME.fullmatch(self.name):
            raise ConfigError(
                f"--name {self.name!r}: a run name is one file name of letters, digits, '.', '_' and '-', "
                "not starting with '.' (it names models/<name>.keras and the folder models/<name>/)"
            )
        if self.photos is None and self.photos_weight is not None:
            raise ConfigError("--photos-weight: only with --photos")

    @property
    def run_name(self) -> str:
        """The default name says what the run is: a sample run is a smoke test, not a model to use."""
        if self.name:
            return self.name
        on_sample = Path(self.data_dir).resolve() == SAMPLE_DIR
        return f"{'smoke-sample' if on_sample else 'mobilenetv2'}-{self.loss}"

    def partition_limit(self, partition: str) -> int | None:
        specific = {"train": self.train_limit, "validation": self.val_limit}.get(partition)
        return specific if specific is not None else self.limit

    def to_json(self) -> dict[str, Any]:
        return {
            k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> tuple[TrainConfig, list[str]]:
        """A config from a run card's "config" (older cards lack newer fields); also the keys it did not know."""
        if not isinstance(values, dict):
            raise ConfigError(f"config: must be a JSON object, got {type(values).__name__}")
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}  # JSON values, each checked and converted to its field's type below
        for key, value in values.items():
            if key not in known:
                continue
            kind, many = _base_type(hints[key])
            if value is not None or not _optional(hints[key]):
                for item in value if many and isinstance(value, list) else [value]:
                    if not _json_fits(item, kind) or (many and not isinstance(value, list)):
                        raise ConfigError(f"config.{key}: {value!r} is not {_json_kind(hints[key])}")
            kwargs[key] = tuple(value) if many else Path(value) if kind is Path and value is not None else value
        return cls(**kwargs), sorted(set(values) - known)


@dataclass
class PhotoFolderOptions:
    """The audit's flags (`--images` and how its truth and groups are read), shared by `evaluate` and `analyze`."""

    images: Path | None = opt(
        None, "a folder of photos to audit instead of CelebA (faces found like predict; docs/audit.md)", none="CelebA"
    )
    labels_csv: Path | None = opt(
        None, "with --images: CSV with file, labels (Male, Young: 0/1/empty), group columns", none="none"
    )
    filename_pattern: str | None = opt(
        None, "with --images, instead of a CSV: e.g. '{age}_{gender}_{race}_*.jpg'", none="none"
    )
    derive: tuple[str, ...] = opt((), "labels from other columns, e.g. 'Young=age<30' 'Male=gender==0'")
    map: tuple[str, ...] = opt((), "names for group values, e.g. 'gender:0=male,1=female'")
    min_slice: int = opt(20, "groups smaller than this are listed but never headlined")
    age_bands: tuple[int, ...] = opt(
        tuple(lo for lo, _ in AGE_BANDS),
        "with --images: the first age of every band an 'age' column is cut into (from 0; children stay visible)",
    )

    def __post_init__(self) -> None:
        at_least(self, 0, "min_slice")
        one_rule_per_label(self, "derive")


def one_rule_per_label(cfg: Any, name: str) -> None:
    """`--derive` rules (LABEL=EXPRESSION) give each label once: a repeated one used to keep the last silently."""
    seen: dict[str, str] = {}
    for spec in getattr(cfg, name):
        label = spec.partition("=")[0].strip()
        if label in seen:
            raise ConfigError(f"{_flag(name)}: {label} is derived twice ({seen[label]!r} and {spec!r}); give one rule")
        seen[label] = spec


@dataclass
class EvalConfig(PhotoFolderOptions):
    """Evaluate a saved model on a CelebA partition: per-label metrics and accuracy per cohort."""

    model: Path = opt(DEFAULT_MODEL, "a saved .keras model with its run card (.json) beside it")
    data_dir: Path = opt(SAMPLE_DIR, "a CelebA folder (official or Kaggle layout)")
    partition: Literal["train", "validation", "test"] = opt("test", "which official partition")
    limit: int | None = opt(None, "only the first N images of the partition", none="all")
    batch_size: int = opt(64, "images per prediction batch")
    threshold: float = opt(0.5, "decision threshold on the probabilities")
    out: Path | None = opt(
        None, "folder for metrics.json/.csv, cohorts.csv, predictions.csv", none="reports/<model name>-<partition>/"
    )
    check_images: bool = opt(True, "decode every image to be scored once up front and skip unreadable ones")
    bins: int = opt(5, "quantile bins of numeric group columns")
    tta: bool = opt(False, "flip test-time augmentation: average each image with its mirror image (2x the compute)")

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, 1, "limit", "batch_size")
        fraction(self, "threshold")
        if self.tta and self.images is not None:
            raise ConfigError("--tta: for a CelebA partition; on a photo folder use `celeba predict --tta`")


# --------------------------------------------------------------------------- dataclass -> argparse


def _optional(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        annotation
    )


def _json_fits(value: Any, kind: Any) -> bool:
    """Whether a JSON value is one of `kind` (a scalar type of the configs, or a Literal)."""
    if typing.get_origin(kind) is Literal:
        return value in typing.get_args(kind)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in (str, Path):
        return isinstance(value, str)
    return True


def _json_kind(annotation: Any) -> str:
    """What a config field holds, in words: "an int", "a list of str", "one of 'bce', 'focal'"."""
    kind, many = _base_type(annotation)
    if typing.get_origin(kind) is Literal:
        words = "one of " + ", ".join(repr(a) for a in typing.get_args(kind))
    else:
        name = {Path: "path", str: "string", int: "integer", float: "number", bool: "true/false"}.get(kind, str(kind))
        words = f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
    words = f"a list of {words.removeprefix('a ').removeprefix('an ')}s" if many else words
    return f"{words} or null" if _optional(annotation) else words


def literal_choices(cfg: Any) -> None:
    """Each Literal field of a config dataclass holds one of its choices (argparse checks flags; this checks
    configs built in code or from a run card)."""
    for name, annotation in typing.get_type_hints(type(cfg)).items():
        kind, many = _base_type(annotation)
        value = getattr(cfg, name, None)
        if typing.get_origin(kind) is not Literal or value is None:
            continue
        choices = typing.get_args(kind)
        for item in value if many else [value]:
            if item not in choices:
                raise ConfigError(f"{_flag(name)}: {item!r} is not one of {', '.join(map(repr, choices))}")


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(scalar type, is_tuple) for the annotations the configs use."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin is tuple:
        return typing.get_args(annotation)[0], True
    return annotation, False
