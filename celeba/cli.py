"""Entry points of `poetry run train | evaluate | test`."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from celeba.config import EvalConfig, TrainConfig, parse_config

log = logging.getLogger("celeba")


def _setup() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the way
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def run_cli(job: Callable[[], object]) -> None:
    """Run a job; bad input ends with one clear line and exit code 2, not a stack trace."""
    from celeba.data import CelebADataError
    from celeba.model import WeightsError

    try:
        job()
    except (CelebADataError, WeightsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: run again with --resume to continue from the last completed epoch", file=sys.stderr)
        sys.exit(130)


def train_main(argv: Sequence[str] | None = None) -> None:
    cfg = parse_config(TrainConfig, argv)
    _setup()
    from celeba.train import train

    run_cli(lambda: train(cfg))


def evaluate_main(argv: Sequence[str] | None = None) -> None:
    cfg = parse_config(EvalConfig, argv)
    _setup()
    from celeba.evaluate import evaluate

    run_cli(lambda: evaluate(cfg))


def test_main(argv: Sequence[str] | None = None) -> None:
    """`poetry run test [pytest args]`: the whole suite, from the repository root."""
    import pytest

    os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.chdir(Path(__file__).resolve().parent.parent)
    sys.exit(pytest.main(list(sys.argv[1:] if argv is None else argv)))
