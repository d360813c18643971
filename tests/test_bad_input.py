"""Hostile numbers, clashing --out files, broken annotation rows: one `error:` line and exit code 2, nothing lost."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from celeba.cli import evaluate_main, export_main, predict_main, serve_main, train_main
from celeba.config import TrainConfig
from celeba.flags import parse_config


def _refused(capsys, parse, message: str) -> None:
    with pytest.raises(SystemExit) as caught:
        parse()  # the command-line entry point: parsing, then the config dataclass's checks
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {message}"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "--epochs: must be at least 1, got 0"),
        (["--epochs", "-3"], "--epochs: must be at least 1, got -3"),
        (["--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
        (["--limit", "-5"], "--limit: must be at least 1, got -5"),
        (["--train-limit", "0"], "--train-limit: must be at least 1, got 0"),
        (["--val-limit", "-1"], "--val-limit: must be at least 1, got -1"),
        (["--freeze-epochs", "-1"], "--freeze-epochs: must be at least 0, got -1"),
        (["--image-size", "8"], "--image-size: must be at least 32, got 8"),
        (["--dense-units", "0"], "--dense-units: must be at least 1, got 0"),
        (["--seed", "-1"], "--seed: must be at least 0, got -1"),
        (["--learning-rate", "nan"], "--learning-rate: must be a finite number > 0, got nan"),
        (["--learning-rate", "inf"], "--learning-rate: must be a finite number > 0, got inf"),
        (["--learning-rate", "0"], "--learning-rate: must be a finite number > 0, got 0.0"),
        (["--dropout", "2"], "--dropout: must be in [0, 1), got 2.0"),
        (["--dropout", "1"], "--dropout: must be in [0, 1), got 1.0"),
    ],
)
def test_train_numbers_are_checked_at_parse_time(capsys, argv, message):
    _refused(capsys, lambda: train_main(argv), message)


def test_evaluate_predict_serve_export_numbers_are_checked(capsys):
    _refused(capsys, lambda: evaluate_main(["--threshold", "1.5"]), "--threshold: must be in [0, 1], got 1.5")
    _refused(capsys, lambda: evaluate_main(["--limit", "0"]), "--limit: must be at least 1, got 0")
    _refused(capsys, lambda: predict_main(["--batch-size", "0"]), "--batch-size: must be at least 1, got 0")
    _refused(capsys, lambda: predict_main(["--batch-size", "-1"]), "--batch-size: must be at least 1, got -1")
    _refused(
        capsys,
        lambda: predict_main(["--max-megapixels", "nan"]),
        "--max-megapixels: must be a finite number > 0, got nan",
    )
    _refused(capsys, lambda: serve_main(["--port", "70000"]), "--port: must be in 0..65535, got 70000")
    _refused(capsys, lambda: serve_main(["--max-bytes", "0"]), "--max-bytes: must be at least 1, got 0")
    _refused(capsys, lambda: export_main(["--min-agreement", "-0.1"]), "--min-agreement: must be in [0, 1], got -0.1")
    _refused(capsys, lambda: export_main(["--tolerance", "nan"]), "--tolerance: must be a finite number >= 0, got nan")


def test_good_numbers_still_parse():
    cfg = parse_config(TrainConfig, ["--epochs", "1", "--dropout", "0", "--limit", "1", "--freeze-epochs", "0"])
    assert (cfg.epochs, cfg.dropout, cfg.limit, cfg.freeze_epochs) == (1, 0.0, 1, 0)


def test_repeated_labels_are_refused():
    from celeba.data import CelebADataError, check_labels

    with pytest.raises(CelebADataError, match="--labels: Smiling given more than once"):
        check_labels(["Smiling", "Smiling"])


# --------------------------------------------------------------------------- export --out


@pytest.fixture
def saved_model(tmp_path) -> Path:
    import keras

    from celeba.checkpoint import save_atomic

    path = tmp_path / "models" / "a.keras"
    save_atomic(
        keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(2)]),
        path,
        labels=["Male", "Young"],
    )
    path.with_suffix(".json").write_text(json.dumps({"config": {"labels": ["Male", "Young"]}}))
    return path


def _export_refused(capsys, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as caught:
        export_main(argv)
    assert caught.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and message in err[0], err


def test_export_never_replaces_another_model_or_its_run_card(saved_model, capsys):
    other = saved_model.with_name("b.keras")
    other.write_bytes(saved_model.read_bytes())
    other_card = other.with_suffix(".json")
    other_card.write_text('{"config": {"labels": ["Smiling"]}}')
    before = other.read_bytes()
    for force in ([], ["--force"]):
        _export_refused(
            capsys, ["--model", str(saved_model), "--out", str(other), *force], "a tflite export must be named *.tflite"
        )
        renamed = other.with_suffix(".tflite")
        renamed.write_bytes(before)  # a Keras file with a .tflite name
        _export_refused(
            capsys,
            ["--model", str(saved_model), "--out", str(renamed), *force],
            "exists and is a keras file, not a tflite model",
        )
        renamed.unlink()
        _export_refused(
            capsys,
            ["--model", str(saved_model), "--out", str(renamed), *force],
            "b.json is the run card of a trained model",
        )
    assert other.read_bytes() == before and other_card.read_text() == '{"config": {"labels": ["Smiling"]}}'


def test_export_refuses_an_existing_export_without_force(saved_model, capsys):
    out = saved_model.with_name("a-float16.tflite")
    out.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))  # what a TFLite file starts with
    _export_refused(capsys, ["--model", str(saved_model), "--out", str(out)], "exists; pass --force to replace it")
    assert out.read_bytes()[4:8] == b"TFL3"


def test_an_exported_model_needs_its_own_card(saved_model, tmp_path):
    from celeba.exported import exported_labels
    from celeba.model import ModelFileError

    out = tmp_path / "x.tflite"
    out.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    with pytest.raises(ModelFileError, match=r"x.json: card of the exported model not found"):
        exported_labels(out)
    out.with_suffix(".json").write_text(
        json.dumps({"source_model": "m.keras", "size_bytes": 999, "config": {"labels": ["Male"]}})
    )
    with pytest.raises(ModelFileError, match="the card belongs to another export"):
        exported_labels(out)


# --------------------------------------------------------------------------- predict: a bad file is skipped


def _png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 90, 90)).save(buf, "PNG")
    return buf.getvalue()


def test_predict_skips_bad_files_and_still_scores_the_good_ones(saved_model, sample_dir, tmp_path, capsys, monkeypatch):
    import cv2

    import celeba.predict as predict
    from celeba.data import image_dir

    good = tmp_path / "good.jpg"
    good.write_bytes(sorted(image_dir(sample_dir).glob("*.jpg"))[1].read_bytes())  # a face the detector finds
    thin = tmp_path / "thin.png"
    thin.write_bytes(_png(1, 30000))  # cv2.resize refused its 0-pixel side: the whole run used to abort
    locked = tmp_path / "locked.jpg"
    locked.write_bytes(good.read_bytes())
    odd = tmp_path / "odd.png"
    odd.write_bytes(_png(300, 200))
    real_read_bytes, real_find_faces = Path.read_bytes, predict.find_faces

    def read_bytes(self):
        if self.name == "locked.jpg":  # root reads any file, so deny it here
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    def find_faces(rgb, *args, **kwargs):
        if rgb.shape[:2] == (200, 300):
            raise cv2.error("OpenCV(4.x) error: (-215:Assertion failed) in function 'detectMultiScale'")
        return real_find_faces(rgb, *args, **kwargs)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(predict, "find_faces", find_faces)
    with pytest.raises(SystemExit) as caught:
        predict_main(
            [str(good), str(thin), str(locked), str(odd), "--model", str(saved_model), "--json", "--batch-size", "4"]
        )
    assert caught.value.code == 2
    out, err = capsys.readouterr()
    results = {Path(r["file"]).name: r for r in json.loads(out)}
    assert set(results) == {"good.jpg", "thin.png"}  # the good images got their output
    assert len(results["good.jpg"]["faces"]) == 1 and results["thin.png"]["faces"] == []
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert any("locked.jpg: cannot read it (Permission denied)" in line for line in errors)
    assert any("odd.png: face detection failed on this 300x200 image" in line for line in errors)
    assert len(errors) == 2


# --------------------------------------------------------------------------- annotation rows


@pytest.fixture
def small_celeba(tmp_path, sample_dir) -> Path:
    """The sample's annotation files and its first 6 images, to break."""
    import shutil

    dest = tmp_path / "celeba"
    (dest / "img_align_celeba").mkdir(parents=True)
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        shutil.copy(sample_dir / name, dest / name)
    for path in sorted((sample_dir / "img_align_celeba").iterdir())[:6]:
        shutil.copy(path, dest / "img_align_celeba" / path.name)
    return dest


def test_an_image_in_two_partitions_is_refused(small_celeba):
    from celeba.data import CelebADataError, load_index

    parts = small_celeba / "list_eval_partition.txt"
    first = parts.read_text().splitlines()[0].split()[0]
    parts.write_text(parts.read_text() + f"{first} 2\n")  # also in test
    with pytest.raises(
        CelebADataError,
        match=rf"list_eval_partition.txt: 1 image\(s\) have conflicting partition "
        rf"rows, e.g. '{first}': \['train', 'test'\]",
    ):
        load_index(small_celeba)


def test_exact_duplicate_rows_are_dropped_with_a_count(small_celeba, caplog):
    from celeba.data import load_index

    before = load_index(small_celeba)
    parts = small_celeba / "list_eval_partition.txt"
    lines = parts.read_text().splitlines()
    parts.write_text("\n".join(lines + lines[:2] + ["999999.jpg 0"]) + "\n")  # 2 repeats, 1 unknown image
    attrs = small_celeba / "list_attr_celeba.txt"
    attr_lines = attrs.read_text().splitlines()
    attrs.write_text("\n".join([str(int(attr_lines[0]) + 1), *attr_lines[1:], attr_lines[2]]) + "\n")
    with caplog.at_level(logging.WARNING):
        after = load_index(small_celeba)
    assert after["image_id"].tolist() == before["image_id"].tolist()  # each image once
    assert "list_eval_partition.txt: 2 duplicate partition rows dropped" in caplog.text
    assert "list_attr_celeba.txt: 1 duplicate attribute rows dropped" in caplog.text
    assert "1 partition rows have no attribute row and are skipped (e.g. 999999.jpg)" in caplog.text


def test_conflicting_attribute_rows_are_refused(small_celeba):
    from celeba.data import CelebADataError, read_attributes

    attrs = small_celeba / "list_attr_celeba.txt"
    lines = attrs.read_text().splitlines()
    flipped = lines[2].split()
    flipped[1] = "1" if flipped[1] == "-1" else "-1"
    attrs.write_text("\n".join([str(int(lines[0]) + 1), *lines[1:], " ".join(flipped)]) + "\n")
    with pytest.raises(CelebADataError, match=r"1 image\(s\) have conflicting attribute rows"):
        read_attributes(attrs)


def test_a_header_missing_one_attribute_is_named(small_celeba):
    from celeba.data import CelebADataError, read_attributes

    attrs = small_celeba / "list_attr_celeba.txt"
    lines = attrs.read_text().splitlines()
    lines[1] = lines[1].replace("Smiling ", "")
    attrs.write_text("\n".join(lines) + "\n")
    with pytest.raises(CelebADataError, match=r"line 2: header lacks attribute\(s\) \['Smiling'\]"):
        read_attributes(attrs)


# --------------------------------------------------------------------------- clear messages, not tracebacks


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, capsys):
    from celeba.cli import train_main

    blocker = tmp_path / "models"
    blocker.write_text("a file where the models folder should be")
    with pytest.raises(SystemExit) as caught:
        train_main(["--models-dir", str(blocker / "sub"), "--weights", "none", "--epochs", "1"])
    assert caught.value.code == 2
    out = capsys.readouterr().err
    err = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and err[0].startswith(f"error: {blocker / 'sub'}: ") and "Traceback" not in out


def test_a_busy_port_is_named_before_the_model_loads():
    import socket

    from celeba.serve import check_port_free

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"--port {port}: cannot listen on 127.0.0.1:{port}"):
            check_port_free("127.0.0.1", port)


def test_save_atomic_leaves_no_temporary_file_when_saving_fails(tmp_path, monkeypatch):
    import keras

    from celeba.checkpoint import save_atomic

    def full_disk(self, filepath, *args, **kwargs):
        Path(filepath).write_bytes(b"")  # the 0-byte temporary file a failed save used to leave
        raise OSError(28, "No space left on device", str(filepath))

    monkeypatch.setattr(keras.Model, "save", full_disk)
    with pytest.raises(OSError):
        save_atomic(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), tmp_path / "m.keras")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- #27: analyze inputs, run names, rules


def test_a_labels_csv_that_is_empty_or_has_a_wide_row_is_named(tmp_path):
    from celeba.analysis.population import read_labels_csv
    from celeba.data import CelebADataError

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(CelebADataError, match=rf"^{empty}: empty file \(a labels CSV starts with a header row"):
        read_labels_csv(empty)  # was pandas' EmptyDataError, exit 1
    wide = tmp_path / "wide.csv"
    wide.write_text("file,age\na.jpg,20,extra\nb.jpg,30\n")
    with pytest.raises(CelebADataError, match=rf"^{wide}: line 2 has 3 fields, the header 2$"):
        read_labels_csv(wide)  # was "file '20' has more than one row" or a shifted table


@pytest.mark.parametrize("rule", ["Young=age<30 if age else 0", "Young=(age<<1)<30"])
def test_a_derive_rule_pandas_cannot_evaluate_is_named(rule):
    import pandas as pd

    from celeba.analysis.population import derive_label
    from celeba.data import CelebADataError

    table = pd.DataFrame({"file": ["a.jpg", "b.jpg"], "age": ["20", "40"]})
    with pytest.raises(CelebADataError, match=rf"^--derive {re.escape(repr(rule))}: cannot evaluate"):
        derive_label(table, rule.partition("=")[2], rule)  # was NotImplementedError: 'IfExp' nodes


def test_analyze_numbers_and_repeated_rules_are_refused(capsys):
    from celeba.cli import analyze_main

    _refused(capsys, lambda: analyze_main(["--min-slice", "-5"]), "--min-slice: must be at least 0, got -5")
    _refused(
        capsys,
        lambda: analyze_main(["--derive", "Young=age<30", "--derive", "Young=age<40"]),
        "--derive: Young is derived twice ('Young=age<30' and 'Young=age<40'); give one rule",
    )
    _refused(
        capsys,
        lambda: evaluate_main(["--derive", "Young=age<30", "Young=age<40"]),
        "--derive: Young is derived twice ('Young=age<30' and 'Young=age<40'); give one rule",
    )


@pytest.mark.parametrize("name", ["../../x", "a/b", ".hidden", ""])
def test_run_names_are_one_file_name(capsys, name):
    _refused(
        capsys,
        lambda: train_main(["--name", name]) if name else train_main(["--name", "x y"]),
        f"--name {name or 'x y'!r}: a run name is one file name of letters, digits, '.', '_' and '-', not "
        "starting with '.' (it names models/<name>.keras and the folder models/<name>/)",
    )


@pytest.mark.parametrize("suffix", [".tflite", ".onnx"])
def test_an_export_of_random_bytes_is_one_line(tmp_path, sample_dir, capsys, suffix):
    model = tmp_path / f"random{suffix}"
    model.write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "random.json").write_text(json.dumps({"model": model.name, "config": {"labels": ["Male"]}}))
    photo = sorted((sample_dir / "img_align_celeba").glob("*.jpg"))[0]
    with pytest.raises(SystemExit) as caught:
        predict_main(["--model", str(model), str(photo)])  # was a UnicodeDecodeError traceback for the .tflite
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    kind = "TFLite" if suffix == ".tflite" else "ONNX"
    assert len(err) == 1 and err[0].startswith(f"error: {model}: not a{'n' * (kind == 'ONNX')} {kind} model, or a")


@pytest.mark.slow
def test_an_annotation_file_without_read_permission_is_one_line(tmp_path, sample_dir, request):
    """As root every file is readable: the command runs as the `nobody` user (setpriv) to meet the refusal."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the command as another user (a non-root user could not test it)")
    base = Path(tempfile.mkdtemp(prefix="celeba-perm-"))  # pytest's own folders are closed to other users
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    data = base / "celeba"
    shutil.copytree(sample_dir, data)
    for path in [base, *base.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (data / "list_attr_celeba.txt").chmod(0)
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo), "HOME": str(base), "TF_CPP_MIN_LOG_LEVEL": "2"}
    run = subprocess.run(
        [
            *("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "celeba"),
            *("analyze", "--data-dir", str(data), "--limit", "8", "--out", str(base / "out")),
        ],
        env=env,
        cwd=base,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.strip().splitlines()[-1] == (
        f"error: {data / 'list_attr_celeba.txt'}: cannot read it (permission denied)"
    )  # was tensorflow's PermissionDeniedError traceback
