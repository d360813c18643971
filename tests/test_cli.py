"""Bad input on the command line ends with one clear line and exit code 2, never a stack trace."""

from __future__ import annotations

import pytest

from celeba.cli import evaluate_main, train_main


def run(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_missing_data_dir(tmp_path, capsys):
    assert f"{tmp_path / 'celeba'}: data folder not found" in run(train_main, ["--data-dir", str(tmp_path / "celeba")], capsys)


def test_unknown_label(capsys):
    assert "unknown attribute(s) ['Smiley']" in run(train_main, ["--labels", "Smiley", "--weights", "none"], capsys)


def test_missing_weights_file(tmp_path, capsys):
    err = run(train_main, ["--weights", str(tmp_path / "w.h5"), "--limit", "4", "--models-dir", str(tmp_path)], capsys)
    assert "w.h5: weights file not found" in err


def test_missing_model(tmp_path, capsys):
    assert "model file not found" in run(evaluate_main, ["--model", str(tmp_path / "none.keras")], capsys)
