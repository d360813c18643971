"""The one command-line layer: parsing, logging set-up, printing, and exceptions -> exit codes.

`celeba train|evaluate|analyze|predict|serve|export|test` (also `python -m celeba ...`), and the same commands as
`poetry run train`, `poetry run evaluate`, ... The pipeline modules return data and print nothing; every line a
command prints is written here. Exit codes: 0 done, 1 an exported model failed its parity check, 2 bad input
(one `error: <what>: <why>` line), 130 interrupted.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

from celeba.commands import (
    _analyze,
    _check_replay,
    _config,
    _evaluate,
    _export,
    _predict,
    _prepare,
    _repair,
    _replay,
    _serve,
    _train,
    _tune,
    _tune_base,
)

log = logging.getLogger("celeba")


def _replayed_card(argv: Sequence[str] | None) -> Path | None:
    """The `--config RUN_CARD.json` among the flags, if any."""
    import argparse

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    return pre.parse_known_args(argv)[0].config


@dataclass(frozen=True)
class Command:
    """A command: its config dataclass (imported on use), what it does, and what Ctrl-C means for it."""

    help: str
    config: Callable[[], type]
    run: Callable[[Any], int]
    replay: Callable[[Path], Any] | None = None
    interrupted: str = "interrupted"
    replay_check: Callable[[Any, Path], None] | None = None  # refuses a replay's config (cfg, the card it read)


COMMANDS: dict[str, Command] = {
    "train": Command(
        "train a model; writes models/<name>.keras and its run card",
        _config("celeba.config", "TrainConfig"),
        _train,
        _replay,
        "interrupted: run the same command with --resume to continue from the last completed epoch",
        _check_replay,
    ),
    "evaluate": Command(
        "per-label and per-cohort metrics of a model on a partition", _config("celeba.config", "EvalConfig"), _evaluate
    ),
    "analyze": Command(
        "the bias report: cohorts, confusion, latent space, saliency, calibration",
        _config("celeba.analyze", "AnalyzeConfig"),
        _analyze,
    ),
    "predict": Command(
        "attribute probabilities for every face in photos", _config("celeba.predict", "PredictConfig"), _predict
    ),
    "serve": Command("HTTP service: POST /predict, GET /health, /docs", _config("celeba.serve", "ServeConfig"), _serve),
    "export": Command(
        "TFLite (float16/int8) or ONNX export with a parity check", _config("celeba.export", "ExportConfig"), _export
    ),
    "repair": Command(
        "retrain a model's last layer on group-balanced data (DFR); writes a new model",
        _config("celeba.repair", "RepairConfig"),
        _repair,
    ),
    "prepare": Command(
        "sharded TFRecords of a CelebA folder (uint8 at the training size), for remote storage",
        _config("celeba.prepare", "PrepareConfig"),
        _prepare,
    ),
    "tune": Command(
        "hyper-parameter search with KerasTuner; writes trials.csv, search.png and best.json",
        _config("celeba.tune_config", "TuneConfig"),
        _tune,
        _tune_base,
        "interrupted: run the same command again to continue the search from KerasTuner's saved state",
    ),
}


# --------------------------------------------------------------------------- the runner


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (exit 2), from the modules already imported (no import just to catch)."""
    errors: list[type[BaseException]] = [FileNotFoundError, FileExistsError]
    for module, names in (
        ("celeba.config", ["ConfigError"]),
        ("celeba.data", ["CelebADataError"]),
        ("celeba.model", ["WeightsError"]),
        ("celeba.runcard", ["RunCardError"]),
    ):
        if module in sys.modules:
            errors += [getattr(sys.modules[module], name) for name in names]
    return tuple(errors)


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def run(name: str, argv: Sequence[str] | None = None, prog: str | None = None) -> NoReturn:
    """Parse, set up logging and a quiet TensorFlow, run, print, and exit with the command's code."""
    from celeba.flags import parse_config

    command = COMMANDS[name]
    cls = command.config()
    try:
        cfg = parse_config(cls, argv, prog=prog, load_base=command.replay)
        if command.replay_check is not None and (card := _replayed_card(argv)) is not None:
            command.replay_check(cfg, card)
    except _user_errors() as exc:  # a ConfigError from the dataclass checks, a missing --config card
        fail(str(exc))
    execute(lambda: command.run(cfg), command.interrupted)


def execute(job: Callable[[], int | None], interrupted: str = "interrupted") -> NoReturn:
    """Logging, a quiet TensorFlow and the device line; then the job, its exceptions mapped to exit codes."""
    from celeba.runtime import device_line, progress_bars_on_a_terminal_only, quiet_tensorflow, setup_logging

    setup_logging()
    progress_bars_on_a_terminal_only()
    try:
        quiet_tensorflow()
        log.info(device_line())
        code = job()
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        sys.exit(130)
    except _user_errors() as exc:
        message = str(exc)
        if isinstance(exc, OSError) and exc.filename and not message.startswith(str(exc.filename)):
            message = f"{exc.filename}: {exc.strerror}"
        fail(message)
    except OSError as exc:  # a read-only folder, a full disk...: say which file and why, in one line
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        if is_disk_full(exc):
            _exit_now(2)
        sys.exit(2)
    sys.exit(code or 0)


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(exc)


def describe_os_error(exc: OSError) -> str:
    """One line `<file>: <why>` (h5py puts the file name and a multi-line reason in the message, not in .filename)."""
    text = " ".join(str(exc).split())
    named = re.search(r"filename = '([^']+)'", text)
    filename = exc.filename or (named[1] if named else None)
    if is_disk_full(exc):
        kept = getattr(exc, "kept", None) or (  # a DiskFullError says what it kept; training's default
            "the last complete model and backup are kept; free space, then run the same command with --resume"
        )
        return f"{filename or 'output'}: no space left on device ({kept})"
    if filename is not None and exc.strerror:
        return f"{filename}: {' '.join(exc.strerror.split())}"
    return text


def _exit_now(code: int) -> NoReturn:
    """Exit without finalizers: after a full disk, h5py's and TensorFlow's clean-up can crash (exit 139)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_script(cls: type, job: Callable[[Any], Any], argv: Sequence[str] | None = None) -> NoReturn:
    """The same runner for scripts outside the commands (benchmarks): a config dataclass and a job on it."""
    from celeba.flags import parse_config

    try:
        cfg = parse_config(cls, argv)
    except _user_errors() as exc:
        fail(str(exc))

    def call() -> int:
        job(cfg)  # scripts report what they measured themselves
        return 0

    execute(call)


class EntryPoint(Protocol):
    def __call__(self, argv: Sequence[str] | None = None) -> NoReturn: ...


def _entry_point(name: str) -> EntryPoint:
    """The `poetry run <name>` script of a command: the same as `celeba <name>`."""

    def entry_point(argv: Sequence[str] | None = None) -> NoReturn:
        run(name, argv)

    entry_point.__name__ = entry_point.__qualname__ = f"{name}_main"
    entry_point.__doc__ = f"`poetry run {name}`: the same as `celeba {name}`."
    return entry_point


# [project.scripts] in pyproject.toml names these (and `test_main`, `main`).
train_main = _entry_point("train")
evaluate_main = _entry_point("evaluate")
analyze_main = _entry_point("analyze")
predict_main = _entry_point("predict")
serve_main = _entry_point("serve")
export_main = _entry_point("export")
prepare_main = _entry_point("prepare")
repair_main = _entry_point("repair")
tune_main = _entry_point("tune")


TEST_USAGE = """usage: celeba test [PYTEST ARGS ...]   (or: poetry run test [PYTEST ARGS ...])

Run the project's test suite from the repository root, from any working directory. Arguments pass to pytest.
With several cores and pytest-xdist installed, the tests spread over up to 4 workers (unless -n or single tests
are given).

examples:
  celeba test                                  the whole suite
  celeba test -m "not slow"                    the fast loop: skips the slow tests (exports, the audit report)
  celeba test tests/test_predict.py -k empty   one file, the tests whose names match
  celeba test -x -q                            stop at the first failure, quietly

pytest's own options: python -m pytest --help"""


def test_main(argv: Sequence[str] | None = None) -> NoReturn:
    """`poetry run test [pytest args]`: the whole suite, from the repository root (`-m "not slow"`: the fast loop)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):  # this command's help, not pytest's hundreds of lines
        print(TEST_USAGE)
        sys.exit(0)
    import pytest

    os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.chdir(Path(__file__).resolve().parent.parent)
    sys.exit(pytest.main(parallel_args(args) + args))


def parallel_args(args: Sequence[str], cores: int | None = None) -> list[str]:
    """pytest-xdist workers, one per core up to 4, unless the user chose (-n, -p no:xdist) or names single tests.

    Much of the suite is single-threaded (imports, graph tracing, subprocess start-up), so two workers on two cores
    finish it in well under the serial time. Each test module stays on one worker (--dist loadscope), so its
    module fixtures (the export, the analysis report, the Tensorleap bundle) are built once.
    """
    import importlib.util

    cores = (os.cpu_count() or 1) if cores is None else cores
    chosen = any(a in ("-n", "--numprocesses", "no:xdist") or a.startswith(("-n", "--numprocesses=")) for a in args)
    single = any("::" in a for a in args)
    if chosen or single or cores < 2 or importlib.util.find_spec("xdist") is None:
        return []
    return ["-n", str(min(cores, 4)), "--dist", "loadscope"]


test_main.__test__ = False  # type: ignore[attr-defined]  # not a test, despite its name


def usage() -> str:
    width = max(map(len, COMMANDS)) + 2
    lines = [f"  {name:<{width}}{command.help}" for name, command in COMMANDS.items()]
    lines.append(f"  {'test':<{width}}the test suite (pytest arguments pass through)")
    return (
        "usage: celeba COMMAND [flags]   (`celeba COMMAND --help` lists a command's flags)\n\n"
        "Predict CelebA face attributes and make the model's biases visible.\n\ncommands:\n" + "\n".join(lines)
    )


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """`celeba COMMAND [flags]`: the umbrella command (works without Poetry; `python -m celeba` too)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if args else 2)
    name, rest = args[0], args[1:]
    if name == "test":
        test_main(rest)
    if name not in COMMANDS:
        fail(f"{name}: unknown command; choose from {', '.join([*COMMANDS, 'test'])}")
    run(name, rest, prog=f"celeba {name}")
