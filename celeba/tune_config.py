"""`celeba tune`'s configuration: the search flags on top of TrainConfig, the search space and its ranges, and a
run card as the base of a search (`--config`). The search itself is `celeba.tune`."""

from __future__ import annotations

import dataclasses
import logging
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from celeba.config import ConfigError, TrainConfig, at_least, opt
from celeba.data import SAMPLE_DIR

log = logging.getLogger(__name__)

#: What `--objective` may maximise: per label, then averaged over the labels.
OBJECTIVES = {
    "score": "mean of the validation accuracy and the worst group's validation accuracy",
    "average": "validation accuracy",
    "worst": "the worst group's validation accuracy",
    "balanced": "group-balanced validation accuracy (the mean over the groups)",
}
#: The TrainConfig fields the search can vary (`--space` picks among them).
SPACE = (
    "learning_rate",
    "finetune_learning_rate",
    "epochs",
    "freeze_epochs",
    "unfreeze",
    "schedule",
    "dropout",
    "weight_decay",
    "label_smoothing",
    "image_size",
    "augment",
    "augment_strength",
    "loss",
)
#: Need a pretrained backbone: with --weights none there is no frozen phase and no fine-tuning phase.
PRETRAINED_ONLY = ("freeze_epochs", "finetune_learning_rate", "unfreeze")
LOSSES: tuple[str, ...] = typing.get_args(typing.get_type_hints(TrainConfig)["loss"])
SCHEDULES: tuple[str, ...] = typing.get_args(typing.get_type_hints(TrainConfig)["schedule"])
WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 1e-3)
LEARNING_RATES = (1e-4, 1e-2)  # log-uniform
FINETUNE_LEARNING_RATES = (1e-5, 1e-3)  # log-uniform
#: Backbone layers fine-tuned, from the top (MobileNetV2 has 153 below the head; the last 30 are blocks 14-16 and
#: the last 1x1 conv); 0: all of them.
UNFREEZE_DEPTHS = (30, 60, 100, 0)
LABEL_SMOOTHINGS = (0.0, 0.05, 0.1, 0.2)
AUGMENT_STRENGTHS = (0.5, 1.0, 1.5, 2.0)
DROPOUTS = (0.0, 0.5, 0.1)  # min, max, step
PROJECT = "tuner"  # KerasTuner's project folder inside the search folder
#: The base config's flags that choose a subset to search on; best.json leaves them out (see `best_card`).
SUBSET_FLAGS = ("limit", "train_limit", "val_limit")
#: The columns of trials.csv before the hyper-parameters.
SCORE_COLUMNS = ("trial", "status", "objective", "average", "worst", "balanced", "seconds")


@dataclass
class TuneConfig(TrainConfig):
    """Search training hyper-parameters with KerasTuner (Bayesian, Hyperband or random); every other flag is the
    base training config each trial starts from."""

    name: str | None = opt(
        None,
        "the search's name: its folder is <models-dir>/<name>; best.json trains as <name>-best",
        none="smoke-sample-tune on the embedded sample, else tune",
    )
    resume: bool = opt(
        True,
        "continue the search in its folder from KerasTuner's saved state (--no-resume: delete it and start over)",
    )
    algorithm: Literal["bayesian", "hyperband", "random"] = opt(
        "bayesian", "KerasTuner's oracle: Bayesian optimisation, Hyperband (budgets in epochs) or random search"
    )
    objective: str = opt(
        "score",
        "what the search maximises, averaged over the labels: score (mean of validation and worst-group accuracy),"
        " average, worst or balanced",
    )
    max_trials: int = opt(20, "bayesian, random: trials in all (hyperband's count follows --max-epochs and --factor)")
    max_epochs: int = opt(6, "epochs of the longest trial: the range of the epochs searched, or hyperband's budget")
    factor: int = opt(3, "hyperband: each round keeps 1/factor of the trials and trains them factor times longer")
    space: tuple[str, ...] = opt(SPACE, "the hyper-parameters searched; the others keep the base config's values")
    image_sizes: tuple[int, ...] = opt((96, 128, 160), "the input sizes searched (with image_size in --space)")
    loss_choices: tuple[str, ...] = opt(LOSSES, "the losses searched (with loss in --space)")
    out: Path | None = opt(
        None,
        "the search folder: KerasTuner's state, trials/, trials.csv, search.png, best.json",
        none="<models-dir>/<name>",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective: unknown objective {self.objective!r}; choose from {', '.join(OBJECTIVES)}")
        at_least(self, 1, "max_trials", "max_epochs")
        at_least(self, 2, "factor")
        for flag, values, known in (("--space", self.space, SPACE), ("--loss-choices", self.loss_choices, LOSSES)):
            unknown = [v for v in values if v not in known]
            if unknown or not values:
                raise ConfigError(f"{flag}: {' '.join(unknown) or 'nothing given'}; choose from {', '.join(known)}")
        if not self.image_sizes or min(self.image_sizes) < 32:
            raise ConfigError(f"--image-sizes: each at least 32 (MobileNetV2's smallest input), got {self.image_sizes}")
        if self.objective != "average" and not set(self.groups) & set(self.labels):
            raise ConfigError(
                f"--groups: the objective {self.objective!r} needs groups among the --labels "
                f"({' '.join(self.labels)}); got {' '.join(self.groups) or 'none'}"
            )

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        return "smoke-sample-tune" if Path(self.data_dir).resolve() == SAMPLE_DIR else "tune"

    @property
    def folder(self) -> Path:
        return Path(self.out) if self.out is not None else Path(self.models_dir) / self.run_name

    def base(self) -> TrainConfig:
        """The training config every trial starts from."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)})

    def searched(self) -> list[str]:
        """The hyper-parameters actually searched: epochs are Hyperband's budget there; freezing needs weights."""
        names = [n for n in self.space if not (n == "epochs" and self.algorithm == "hyperband")]
        return [n for n in names if not (n in PRETRAINED_ONLY and self.weights.lower() == "none")]


_SEARCH_DEFAULTS = {"name": None, "resume": True}


def from_card(path: Path) -> TuneConfig:
    """`--config RUN_CARD.json`: the card's training config is the base; the search flags keep their defaults."""
    from celeba.runcard import RunCard

    base = RunCard.load(path).train_config()
    return TuneConfig(**{f.name: getattr(base, f.name) for f in dataclasses.fields(TrainConfig)} | _SEARCH_DEFAULTS)
