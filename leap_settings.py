"""The Tensorleap integration's settings: `project_config.yaml` beside leap_binder.py, read and checked once.

Plain dataclasses over the `celeba` package's label checks; no code-loader, no TensorFlow. No
`from __future__ import annotations`, like leap_binder.py (code-loader reads annotations as real classes).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from celeba import data, sources

ROOT = Path(__file__).resolve().parent
CONFIG_FILE = ROOT / "project_config.yaml"
PHOTO_COLUMNS = ("race", "age", "gender")  # population metadata read from the photo folder's CSV


def _error(path: Path, problem: str) -> data.CelebADataError:
    return data.CelebADataError(f"{path}: {problem}")


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


@dataclass(frozen=True)
class PhotoConfig:
    """`photos` in `project_config.yaml`: a labelled photo folder, the binder's `additional` subset."""

    root: str = "utkface"  # the folder on the data volume (looked up like data_root); absolute: as it is
    images: str = "images"  # relative to root
    labels_csv: str = "labels.csv"  # relative to root: `file` plus label and group columns
    derive: tuple[str, ...] = ()  # labels from other columns, e.g. 'Young=age<30'
    split_file: str | None = None  # relative to root: file,split (train/validation/evaluation)
    splits: tuple[str, ...] | None = None  # which parts of the split file; None: every photo
    crops: str = "crops"  # relative to root: the face-crop cache (made once; upload it with the folder)
    columns: dict[str, str | None] = field(default_factory=lambda: {name: name for name in PHOTO_COLUMNS})

    @classmethod
    def parse(cls, raw: Any, path: Path) -> "PhotoConfig | None":
        """The `photos` section (None: no photo subset); a problem is an error naming the file and the setting."""
        if raw is None:
            return None
        problem = cls.problem(raw)
        if problem:
            raise _error(path, f"photos: {problem}")
        columns = raw.get("columns", cls().columns)
        return cls(
            **{
                **raw,
                "derive": tuple(raw.get("derive", ())),
                "splits": None if raw.get("splits") is None else tuple(raw["splits"]),
                "columns": {name: columns.get(name) for name in PHOTO_COLUMNS},
            }
        )

    @classmethod
    def problem(cls, raw: Any) -> str | None:
        """What is wrong with a raw `photos` section, if anything."""
        if not isinstance(raw, dict):
            return f"must be a mapping or null, got {raw!r}"
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        names = [k for k in ("root", "images", "labels_csv", "crops", "split_file") if k in raw]
        wrong = [k for k in names if not isinstance(raw[k], str) and not (k == "split_file" and raw[k] is None)]
        derive, splits, columns = raw.get("derive", []), raw.get("splits"), raw.get("columns", {})
        problems = [
            (unknown, f"unknown setting(s) {unknown}"),
            (wrong, f"{', '.join(wrong)} must be a file or folder name"),
            (
                not _strings(derive) or any("=" not in d for d in derive),
                f"derive must be a list like ['Young=age<30'], got {derive!r}",
            ),
            (
                splits is not None and (not _strings(splits) or not set(splits) <= set(sources.SPLITS)),
                f"splits must be null or a list of {list(sources.SPLITS)}, got {splits!r}",
            ),
            (splits is not None and raw.get("split_file") is None, "splits needs a split_file"),
            (
                not isinstance(columns, dict)
                or not set(columns) <= set(PHOTO_COLUMNS)
                or not all(isinstance(v, str | None) for v in columns.values()),
                f"columns maps {list(PHOTO_COLUMNS)} to CSV column names (or null), got {columns!r}",
            ),
        ]
        return next((message for failed, message in problems if failed), None)


@dataclass(frozen=True)
class ProjectConfig:
    """`project_config.yaml`: what the platform cannot learn from the uploaded model file alone."""

    data_root: str = "celeba"
    labels: tuple[str, ...] = ("Male", "Young")
    image_size: int = 160
    class_weights: dict[str, dict[str, float]] | None = None  # label -> {positive: w, negative: w}
    sample_limit_per_split: int | None = None
    model: str = "models/multisource16k-bce-160b-float32.onnx"
    comparison_model: str | None = None  # a second ONNX model to compare (issue #24 item 5); unused so far
    photos: PhotoConfig | None = None
    path: Path = field(default=CONFIG_FILE, compare=False)

    @classmethod
    def read(cls, path: Path = CONFIG_FILE) -> "ProjectConfig":
        """Parse and check the file; every problem names the file and the setting."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise _error(path, f"cannot read the integration settings ({exc})") from None
        unknown = sorted(set(raw) - {f for f in cls.__dataclass_fields__ if f != "path"})
        if unknown:
            raise _error(path, f"unknown setting(s) {unknown}")
        try:
            labels = data.check_labels(tuple(raw.get("labels", cls.labels)))
        except data.CelebADataError as exc:
            raise _error(path, f"labels: {exc}") from None
        config = cls(**{**raw, "labels": labels, "photos": PhotoConfig.parse(raw.get("photos"), path), "path": path})
        config.check()
        return config

    def check(self) -> None:
        """The scalar settings' types and ranges."""
        if not isinstance(self.image_size, int) or self.image_size < 32:
            raise _error(self.path, f"image_size must be an integer >= 32, got {self.image_size!r}")
        limit = self.sample_limit_per_split
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise _error(self.path, f"sample_limit_per_split must be a positive integer or null, got {limit!r}")
        if self.comparison_model is not None and not isinstance(self.comparison_model, str):
            raise _error(
                self.path, f"comparison_model must be an .onnx file name or null, got {self.comparison_model!r}"
            )
        weights = self.class_weights
        if weights is not None and (
            set(weights) != set(self.labels) or any(set(w) != {"positive", "negative"} for w in weights.values())
        ):
            raise _error(
                self.path,
                f"class_weights needs {{positive: w, negative: w}} for exactly the labels {list(self.labels)}, "
                f"got {weights}",
            )

    def pos_neg_weights(self) -> tuple[list[float], list[float]]:
        """The weights in label order, as `celeba.losses.WeightedBinaryCrossentropy` takes them."""
        assert self.class_weights is not None
        return (
            [float(self.class_weights[label]["positive"]) for label in self.labels],
            [float(self.class_weights[label]["negative"]) for label in self.labels],
        )
