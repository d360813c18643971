"""The command line as a user meets it: one clear error line and exit code 2 on bad input, the umbrella command,
quiet start-up, complete help."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from celeba.cli import COMMANDS, evaluate_main, main, train_main
from celeba.config import REPO_ROOT

ALARMING = ("E0000", "W0000", "I0000", "cuInit", "oneDNN", "absl::InitializeLog", "Traceback", "\x1b[")


def run(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def celeba(*args: str, cwd: Path = REPO_ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m celeba ...` in its own process, TF_CPP_MIN_LOG_LEVEL unset as in a user's shell."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "celeba", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_missing_data_dir(tmp_path, capsys):
    assert f"{tmp_path / 'celeba'}: data folder not found" in run(
        train_main, ["--data-dir", str(tmp_path / "celeba")], capsys
    )


def test_unknown_label(capsys):
    assert "unknown attribute(s) ['Smiley']" in run(train_main, ["--labels", "Smiley", "--weights", "none"], capsys)


def test_missing_weights_file_leaves_no_run_folder(tmp_path, capsys):
    err = run(
        train_main,
        ["--weights", str(tmp_path / "w.h5"), "--limit", "4", "--models-dir", str(tmp_path / "m"), "--no-check-images"],
        capsys,
    )
    assert "w.h5: weights file not found" in err
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_missing_model(tmp_path, capsys):
    assert "model file not found" in run(evaluate_main, ["--model", str(tmp_path / "none.keras")], capsys)


def test_config_error_is_one_line_and_exit_2(capsys):
    """The dataclasses' own checks raise ConfigError('--flag: why'); the runner prints it like any bad input."""
    from dataclasses import dataclass

    from celeba.cli import run_script
    from celeba.config import ConfigError, opt

    @dataclass
    class Checked:
        epochs: int = opt(1, "epochs")

        def __post_init__(self):
            if self.epochs < 1:
                raise ConfigError(f"--epochs: must be at least 1, got {self.epochs}")

    assert run(lambda argv: run_script(Checked, print, argv), ["--epochs", "0"], capsys) == (
        "error: --epochs: must be at least 1, got 0\n"
    )


def test_replay_needs_an_existing_run_card(tmp_path, capsys):
    assert "run card not found" in run(train_main, ["--config", str(tmp_path / "nope.json")], capsys)


def test_umbrella_lists_every_command_and_refuses_unknown_ones(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in [*COMMANDS, "test"])
    err = run(main, ["fly"], capsys)
    assert "fly: unknown command" in err


def test_console_scripts_point_at_the_cli_layer():
    """Every documented `poetry run <name>` and the umbrella `celeba` resolve to a callable of celeba.cli."""
    import importlib

    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"celeba", *COMMANDS, "test"}
    for name, target in scripts.items():
        module, function = target.split(":")
        assert module == "celeba.cli" and callable(getattr(importlib.import_module(module), function)), name


def test_umbrella_command_in_a_subprocess_from_another_directory(tmp_path):
    result = celeba("predict", "--help", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: celeba predict" in result.stdout and "PATH" in result.stdout and "--paths" not in result.stdout
    assert result.stderr == ""


def test_predict_on_a_demo_photo_is_quiet_and_meaningful(tmp_path):
    """The README's first command, from another directory: the default model, no alarming line on stderr."""
    result = celeba("predict", str(REPO_ROOT / "data" / "demo" / "portrait.jpg"), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and ("device: CPU" in lines[0] or "GPU" in lines[0]), result.stderr
    assert not any(marker in result.stderr for marker in ALARMING), result.stderr
    import json

    faces = json.loads(result.stdout)[0]["faces"]
    assert len(faces) == 1 and faces[0]["probabilities"]["Male"] > 0.5  # data/demo/README.md: a young man


def test_the_cli_logs_its_own_info_lines_and_only_warnings_of_other_libraries():
    """tf2onnx and TensorFlow's SavedModel writer log INFO lines through `logging` during an export; a fresh
    process (the CLI's logging set-up, no pytest handlers) shows the project's lines and hides theirs."""
    code = (
        "import logging; from celeba.runtime import setup_logging; setup_logging(); "
        "other = logging.getLogger('tf2onnx'); other.info('library chatter'); other.warning('library warning'); "
        "logging.getLogger('celeba.export').info('converting')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "INFO converting" in result.stderr and "WARNING library warning" in result.stderr
    assert "library chatter" not in result.stderr


def test_the_suite_runs_on_every_core_unless_told_otherwise():
    from celeba.cli import parallel_args

    assert parallel_args([], cores=2) == ["-n", "2", "--dist", "loadscope"]
    assert parallel_args(["-m", "not slow"], cores=16)[:2] == ["-n", "4"]  # capped: each worker holds a TensorFlow
    assert parallel_args([], cores=1) == []
    assert parallel_args(["-n", "0"], cores=2) == parallel_args(["-p", "no:xdist"], cores=2) == []
    assert parallel_args(["tests/test_cli.py::test_umbrella_command"], cores=2) == []  # one test: no workers


@pytest.mark.parametrize("level", [None, "0", "2", "3"])
def test_tensorflow_starts_quietly_whatever_log_level_the_user_set(level):
    """Many users export TF_CPP_MIN_LOG_LEVEL=3: TensorFlow's pre-logging lines (absl preamble, CUDA stub) ignore it,
    and below 3 the first device query prints `failed call to cuInit`. A fresh process shows all of them."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env |= {"TF_CPP_MIN_LOG_LEVEL": level} if level is not None else {}
    code = "from celeba.runtime import device_line, quiet_tensorflow; quiet_tensorflow(); print(device_line())"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("device: ") and result.stderr == "", result.stderr


def test_measuring_the_face_framing_is_quiet():
    """`python -m celeba.face_measure` (re-measures the framing constants) loads TensorFlow's TFLite runtime."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "celeba.face_measure", "--limit", "3"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "face found in" in result.stdout and result.stderr == "", result.stderr


def test_test_help_is_this_commands_not_pytests():
    result = celeba("test", "--help", timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("usage: celeba test [PYTEST ARGS ...]") and '-m "not slow"' in result.stdout
    assert len(result.stdout.splitlines()) < 20 and "--capture" not in result.stdout  # not pytest's own help


def test_export_help_names_both_formats(capsys):
    from celeba.cli import export_main

    with pytest.raises(SystemExit) as exit_info:
        export_main(["--help"])
    assert exit_info.value.code == 0
    description = " ".join(capsys.readouterr().out.split("\n\n")[1].split())
    assert description.startswith("Export a trained model to TFLite") and "ONNX" in description


def test_progress_bars_leave_no_carriage_return_frames_in_a_log():
    """`celeba ... 2> run.log`: tqdm's bars (here the image check of a large partition, in celeba.data) must not
    write their `\\r` frames into the file. A fresh process, stderr a pipe as in a log."""
    code = (
        "from dataclasses import dataclass; from celeba.cli import run_script; from celeba.config import opt\n"
        "from celeba.data import SAMPLE_DIR, find_bad_images, image_dir\n"
        "@dataclass\nclass Check:\n    copies: int = opt(7, 'copies')\n"
        "paths = [str(p) for p in sorted(image_dir(SAMPLE_DIR).glob('*.jpg'))]\n"
        "run_script(Check, lambda cfg: print(len(find_bad_images(paths * cfg.copies)), len(paths) * cfg.copies))\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "2093"]  # over the 2,000 images from which the check shows its bar
    assert "\r" not in result.stderr and "checking images" not in result.stderr, repr(result.stderr[-500:])
