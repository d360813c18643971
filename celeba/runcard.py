"""The run card: the JSON file beside every saved model that says what it is, how it was made and how good it is.

One typed `RunCard`, written by training (and, in a smaller form, by export) and read through `RunCard.load`
everywhere else. Older cards (without provenance or per-phase throughput) load too; keys this version does not
know are kept in `extra` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celeba.config import REPO_ROOT, ConfigError, TrainConfig
from celeba.data import (
    ATTR_FILES,
    ATTRIBUTES,
    IDENTITY_FILE,
    LANDMARKS_FILE,
    PARTITION_FILES,
    _find_optional,
    is_dir,
    is_url,
)
from celeba.files import atomic_path

log = logging.getLogger(__name__)

#: Below this validation ROC-AUC a model is about as good as a coin for that label: commands warn when loading it.
USELESS_ROC_AUC = 0.6


class RunCardError(ValueError):
    """A run card that cannot be read; the message names the file."""


def card_path(model_path: Path) -> Path:
    """The run card of a model file: same name, `.json`."""
    return Path(model_path).with_suffix(".json")


#: What a replay (`train --config CARD`) appends to the replayed run's name: it never writes over the run it reads.
REPLAY_SUFFIX = "-replay"


def check_replay(cfg: Any, card: Path) -> None:
    """Refuse a replay (`cfg`, parsed from `--config card` and the flags after it) that would write the card it
    reads, e.g. after `--name` set back to the original run's name."""
    read = Path(card) if Path(card).suffix == ".json" else card_path(card)
    written = Path(cfg.models_dir) / f"{cfg.run_name}.json"
    if written.resolve() == read.resolve():
        raise RunCardError(
            f"--name {cfg.run_name}: the replay would overwrite the run card it replays ({read}); "
            f"leave --name out (it writes {cfg.run_name}{REPLAY_SUFFIX}) or pick another"
        )


def check_card_labels(labels: Any) -> None:
    """config.labels is a list of CelebA attribute names (a string such as "MY" would read as the labels M, Y)."""

    if not isinstance(labels, list) or not labels or not all(isinstance(label, str) for label in labels):
        raise ValueError(f"config.labels must be a list of CelebA attribute names, got {labels!r}")
    unknown = [label for label in labels if label not in ATTRIBUTES]
    if unknown:
        raise ValueError(f"config.labels: {unknown} are not CelebA attributes (e.g. Male, Young)")


#: The keys of every training card since the first (the committed models' cards have exactly these).
TRAINING_KEYS = (
    "data",
    "class_weights",
    "validation_metrics",
    "epochs_trained",
    "time_s",
    "train_images_per_s",
    "environment",
)


@dataclass
class RunCard:
    """What `models/<name>.json` holds. `config` is the training config as JSON (for exports: labels, image size)."""

    model: str
    config: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    class_weights: dict[str, dict[str, float]] | None = None
    validation_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    epochs_trained: int | None = None
    time_s: float | None = None
    train_images_per_s: float | None = None
    train_images_per_s_by_phase: dict[str, float] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # git commit, dirty flag, annotation hash, data dir
    extra: dict[str, Any] = field(default_factory=dict)  # any other key (e.g. an export's parity check)

    # ----------------------------------------------------------------------- reading

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.config["labels"])

    @property
    def image_size(self) -> int | None:
        size = self.config.get("image_size")
        return int(size) if size is not None else None

    def roc_auc(self) -> dict[str, float]:
        """Validation ROC-AUC per label (empty for cards without validation metrics)."""
        return {
            label: float(m["roc_auc"])
            for label, m in self.validation_metrics.items()
            if isinstance(m, dict) and m.get("roc_auc") is not None
        }

    def quality_warning(self) -> str | None:
        """A sentence when the model is near chance on some label (a smoke run, or a failed training), else None."""
        weak = {label: auc for label, auc in self.roc_auc().items() if auc < USELESS_ROC_AUC}
        if not weak:
            return None
        listed = ", ".join(f"{label} {auc:.2f}" for label, auc in weak.items())
        return (
            f"{self.model}: validation ROC-AUC {listed} is near chance (0.5): its predictions are not meaningful "
            f"(a smoke-test model?)"
        )

    def train_config(self) -> Any:
        """The TrainConfig this run was trained with (for `train --config`), run on the same absolute data dir."""

        cfg, unknown = TrainConfig.from_json(self.config)
        if unknown:
            log.warning("%s: config keys this version does not know are ignored: %s", self.model, ", ".join(unknown))
        data_dir = self.provenance.get("data_dir")
        if data_dir and is_dir(data_dir):  # local or gs:// alike (tf.io.gfile)
            cfg = dataclasses.replace(cfg, data_dir=Path(data_dir))
        return dataclasses.replace(cfg, resume=False)

    def replay_config(self, card: Path) -> Any:
        """`train_config` as a replay from the card file `card`: named `<name>-replay` unless a flag renames it
        (`check_replay` then refuses a name whose card would be `card`)."""

        try:
            cfg = self.train_config()
        except ConfigError as exc:  # a tampered card: a string image size, an unknown loss, a list for config
            raise RunCardError(f"{card}: cannot replay this run card: {exc}") from None
        return dataclasses.replace(cfg, name=f"{cfg.run_name}{REPLAY_SUFFIX}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunCard:
        if not isinstance(values, dict):
            raise ValueError(f"not a run card: a JSON {type(values).__name__}, not an object")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in values.items() if k in names}
        extra = {k: v for k, v in values.items() if k not in names}
        if "config" not in known or not isinstance(known["config"], dict) or "labels" not in known["config"]:
            raise ValueError("not a run card: it has no config.labels")
        check_card_labels(known["config"]["labels"])
        known.setdefault("model", "")
        return cls(**known, extra=extra)

    @classmethod
    def load(cls, path: Path) -> RunCard:
        """Load a card; `path` is the card itself or the model file it sits beside."""
        path = Path(path)
        card = path if path.suffix == ".json" else card_path(path)
        if not card.is_file():
            raise FileNotFoundError(f"{card}: run card not found (it sits beside the model and gives its labels)")
        try:
            return cls.from_dict(json.loads(card.read_text()))
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            raise RunCardError(f"{card}: unreadable run card ({exc})") from None

    # ----------------------------------------------------------------------- writing

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: a training card keeps the original keys; newer or unused fields appear only when set."""
        always = {"config"} | (set(TRAINING_KEYS) if self.epochs_trained is not None else set())
        values = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "extra" and (f.name in always or getattr(self, f.name) not in (None, {}, ""))
        }
        return values | self.extra

    def save(self, path: Path) -> Path:
        """Write atomically (temporary file + rename): a reader never sees half a card."""
        path = Path(path)
        card = path if path.suffix == ".json" else card_path(path)
        with atomic_path(card) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return card


# --------------------------------------------------------------------------- provenance


def git_state(folder: Path) -> dict[str, Any]:
    """The commit and whether the checkout had uncommitted changes; empty outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit, "git_dirty": bool(status.strip())}


def annotations_sha256(data_dir: Path) -> dict[str, str]:
    """SHA-256 of every annotation file found in a CelebA folder: the labels a model was trained on."""
    import tensorflow as tf

    hashes = {}
    for name in (*ATTR_FILES, *PARTITION_FILES, IDENTITY_FILE, LANDMARKS_FILE):
        found = _find_optional(data_dir, name)  # a path or a URL (gs://...): read through tf.io.gfile
        if found is not None:
            with tf.io.gfile.GFile(found, "rb") as f:
                hashes[name] = hashlib.sha256(f.read()).hexdigest()
    return hashes


def provenance(data_dir: Path) -> dict[str, Any]:
    """Where a run came from: code (git commit, dirty flag), data (absolute folder, annotation hashes)."""

    return {
        **git_state(REPO_ROOT),
        "data_dir": str(data_dir) if is_url(data_dir) else str(Path(data_dir).resolve()),  # gs://, s3:// as given
        "annotations_sha256": annotations_sha256(data_dir),
    }
