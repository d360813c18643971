"""TFLite export of the tiny model, with the parity check on the shipped sample.

The tiny model (1 epoch on 32 images) has a narrow output range, so a probability tolerance is easy
for it to meet; label agreement and the direct comparison against Keras below are the sharper checks.
"""

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from roundtrip import assert_round_trip

from celeba.cli import export_main
from celeba.config import ConfigError
from celeba.data import SAMPLE_DIR
from celeba.export import (
    TOLERANCE,
    ExportConfig,
    Exported,
    export,
    parity,
    parity_failure,
    parity_line,
    verify,
)
from celeba.exported import TFLiteModel
from celeba.model import load_model
from celeba.runcard import card_path

QUANTIZE = ("float16", "int8", "int16x8")
PARITY = 96  # parity images per target here; the command's default is every image of the sample (tested below)


def _copy_model(tiny_model, folder):
    """The shared tiny model and its run card, copied: exports land in exports/ beside the model they come from."""
    folder.mkdir(exist_ok=True)
    for path in (tiny_model, card_path(tiny_model)):
        shutil.copy(path, folder / path.name)
    return folder / tiny_model.name


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    """Every target from one export call, as a user asks for them: the files land in exports/ beside the model."""
    model = _copy_model(tiny_model, tmp_path_factory.mktemp("export"))
    cfg = ExportConfig(
        model=model, format=("tflite", "onnx"), quantize=QUANTIZE, representative=32, parity_limit=PARITY
    )
    done = export(cfg)
    assert all(isinstance(d, Exported) and d.card.is_file() for d in done)
    cards = {d.quantize if d.format == "tflite" else "onnx": d for d in done}
    return model.parent / "exports", cards


@pytest.mark.slow  # the export fixture converts the model four times
@pytest.mark.parametrize("quantize", QUANTIZE)
def test_parity_on_the_shipped_sample(exported, quantize):
    out, cards = exported
    check = cards[quantize].parity
    assert check["images"] == PARITY and check["parity_dir"] == str(SAMPLE_DIR)
    model, labels = load_model(out.parent / "tiny.keras")
    assert_round_trip(cards[quantize].model, model, labels=labels, atol=TOLERANCE[quantize])
    assert check["passed"] and check["max_abs_diff"] <= TOLERANCE[quantize]
    assert check["label_agreement"] >= 0.99
    card = json.loads((out / f"tiny-{quantize}.json").read_text())
    assert card["config"]["labels"] == ["Male", "Young"] and card["parity"] == check


@pytest.mark.slow  # the export fixture converts the model four times
def test_onnx_export_matches_keras_and_serves_predictions(exported, tiny_model):
    from celeba.predict import Predictor

    out, cards = exported
    check = cards["onnx"].parity
    model, labels = load_model(tiny_model)
    assert_round_trip(cards["onnx"].model, model, labels=labels, atol=TOLERANCE["none"])
    assert check["images"] == PARITY and check["passed"] and check["max_abs_diff"] <= TOLERANCE["none"]
    onnx, keras_model = Predictor(out / "tiny-float32.onnx"), Predictor(tiny_model)
    assert onnx.labels == ("Male", "Young") and onnx.image_size == 64
    photo = np.random.default_rng(2).integers(0, 256, (218, 178, 3), dtype=np.uint8)
    a, b = (p.score_photos([photo], detect=False)[0][0].probabilities for p in (onnx, keras_model))
    assert a == pytest.approx(b, abs=1e-3)


def test_export_refuses_to_overwrite_the_run_card(tiny_model):
    with pytest.raises(FileExistsError, match="another name"):
        export(ExportConfig(model=tiny_model, format=("onnx",), out=tiny_model.with_suffix(".onnx")))


@pytest.mark.slow  # the export fixture converts the model four times
def test_quantized_files_are_smaller(exported, tiny_model):
    out, cards = exported
    keras_size = tiny_model.stat().st_size
    fp16, int8 = (out / "tiny-float16.tflite").stat().st_size, (out / "tiny-int8.tflite").stat().st_size
    assert int8 < fp16 < keras_size
    assert fp16 < 0.6 * keras_size and int8 < 0.35 * keras_size  # half and a quarter of float32 weights, roughly


@pytest.mark.slow  # the export fixture converts the model four times
def test_tflite_model_matches_keras_on_any_batch_size(exported, tiny_model):
    from celeba.model import load_model

    out, _ = exported
    model, labels = load_model(tiny_model)
    lite = TFLiteModel(out / "tiny-float16.tflite")
    assert lite.labels == labels and lite.image_size == 64
    x = np.random.default_rng(0).uniform(0, 255, (5, 64, 64, 3)).astype(np.float32)
    expected = np.asarray(model.predict_on_batch(x))
    np.testing.assert_allclose(lite(x), expected, atol=TOLERANCE["float16"])
    np.testing.assert_allclose(lite(x[:1]), expected[:1], atol=TOLERANCE["float16"])  # resized input tensor


@pytest.mark.slow  # the export fixture converts the model four times
def test_a_tflite_model_in_a_fresh_process_prints_no_delegate_line(exported):
    """TFLite prints "Created TensorFlow Lite XNNPACK delegate" once per process, at its first allocation: only a
    fresh process shows whether loading and calling a TFLiteModel lets it through."""
    import subprocess
    import sys

    out, _ = exported
    code = (
        "import sys, numpy as np; from celeba.exported import TFLiteModel; "
        "model = TFLiteModel(sys.argv[1]); print(model(np.zeros((3, 64, 64, 3), np.float32)).shape)"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}  # TensorFlow's start-up lines are another test's business
    done = subprocess.run(
        [sys.executable, "-c", code, str(out / "tiny-float16.tflite")], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(3, 2)" and "XNNPACK" not in done.stderr, done.stderr


def _reference_parity(keras_probs: np.ndarray, other: np.ndarray, threshold: float = 0.5) -> dict:
    """What parity() must report, written out plainly."""
    diff = np.abs(keras_probs - other)
    agree = (keras_probs >= threshold) == (other >= threshold)
    return {
        "images": len(keras_probs),
        "max_abs_diff": diff.max(),
        "mean_abs_diff": diff.mean(),
        "label_agreement": agree.mean(),
    }


def test_parity_detects_a_model_that_disagrees(tiny_model):
    from celeba.model import load_model

    model, _ = load_model(tiny_model)
    flipped = lambda x: 1 - np.asarray(model.predict_on_batch(x))  # noqa: E731
    same = lambda x: np.asarray(model.predict_on_batch(x))  # noqa: E731
    x = np.random.default_rng(1).uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    bad, good = parity(model, [flipped, same], iter([x, x[:2]]))  # one pass, one check per exported model
    assert bad["images"] == good["images"] == 6
    p = np.asarray(model.predict_on_batch(np.concatenate([x, x[:2]])))
    assert not np.isclose(p, 0.5).any()  # so 1 - p is on the other side of the threshold for every label
    assert bad["label_agreement"] == 0.0 and bad["max_abs_diff"] == pytest.approx(np.abs(1 - 2 * p).max(), abs=1e-6)
    assert good["max_abs_diff"] == 0.0 and good["label_agreement"] == 1.0


def test_parity_compares_the_exported_model_with_keras(tiny_model):
    """Every number of a check is Keras against the exported model, field by field, against a reference: an
    exported model that answers a constant is compared with Keras' own probabilities, not with itself."""
    from celeba.model import load_model

    model, _ = load_model(tiny_model)
    x = np.random.default_rng(2).uniform(0, 255, (6, 64, 64, 3)).astype(np.float32)
    p = np.asarray(model.predict_on_batch(x))
    for constant in (0.0, 1.0, float(np.median(p))):
        exported = lambda batch, c=constant: np.full((len(batch), p.shape[1]), c, np.float32)  # noqa: E731
        (check,) = parity(model, [exported], iter([x]))
        expected = _reference_parity(p, np.full_like(p, constant))
        assert check == pytest.approx(expected, abs=1e-6), constant


@pytest.mark.slow  # the export fixture converts the model four times
def test_failed_parity_is_a_sentence_with_the_numbers(exported, tiny_model, capsys):
    from celeba.model import load_model

    out, _ = exported
    model, _ = load_model(tiny_model)
    cfg = ExportConfig(model=tiny_model, tolerance=0.0, parity_limit=16)  # float16 is never exact
    fp16, onnx = verify(model, [out / "tiny-float16.tflite", out / "tiny-float32.onnx"], cfg)
    assert not fp16["passed"] and fp16["images"] == 16 and fp16["tolerance"] == 0.0
    message = parity_failure(out / "tiny-float16.tflite", fp16)  # a sentence, not a raw dict
    assert message and "parity check failed on 16 images: max |probability difference|" in message
    assert "> tolerance 0" in message and "{" not in message
    assert not capsys.readouterr().out  # the logic prints nothing; the CLI does
    line = parity_line(fp16)
    assert line.startswith("parity on 16 images: max |dp| ") and line.endswith("FAIL")
    passed = verify(model, [out / "tiny-float16.tflite"], ExportConfig(model=tiny_model, parity_limit=16))[0]
    assert passed["passed"] and passed["tolerance"] == TOLERANCE["float16"]  # the card's quantization sets it
    assert parity_failure(out / "tiny-float16.tflite", passed) is None


def test_several_targets_are_planned_in_order_and_checked_before_any_work(tiny_model, tmp_path):
    cfg = ExportConfig(format=("onnx", "tflite"), quantize=("int8", "float16", "int8"))
    assert cfg.targets() == [("tflite", "int8"), ("tflite", "float16"), ("onnx", "none")]
    assert ExportConfig(format=("onnx",)).targets() == [("onnx", "none")]
    with pytest.raises(ConfigError, match="names one file, but 2 targets"):
        ExportConfig(quantize=("float16", "int8"), out=tmp_path / "one.tflite")
    model = _copy_model(tiny_model, tmp_path / "m")
    (model.parent / "exports").mkdir()
    (model.parent / "exports" / "tiny-int8.tflite").write_bytes(b"not a model")  # the second target's is in the way
    with pytest.raises(FileExistsError, match="tiny-int8.tflite: exists and is an unknown file"):
        export(ExportConfig(model=model, quantize=("float16", "int8")))
    assert not (model.parent / "exports" / "tiny-float16.tflite").exists()  # refused before the first conversion


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--model", str(tmp_path / "nope.keras")])
    assert exit_info.value.code == 2 and "nope.keras: model file not found" in capsys.readouterr().err


def test_default_parity_data_is_every_image_of_the_shipped_sample():
    from celeba.export import _batches

    cfg = ExportConfig()
    assert cfg.parity_dir == SAMPLE_DIR and cfg.parity_limit is None and cfg.min_agreement == 0.99
    batches = list(_batches(cfg.parity_dir, None, cfg.parity_limit, 32, cfg.batch_size))  # what verify() reads
    assert sum(len(b) for b in batches) == 299 and batches[0].shape[1:] == (32, 32, 3)


def test_default_outputs_are_never_tracked_files():
    """A fresh clone exports without --out: no default file may be a committed one (the committed ONNX export of
    the default model was once the default ONNX output, so `export --format onnx` refused to run), and git ignores
    every default output, so an export never shows up as a change to commit."""
    import subprocess

    from celeba.config import REPO_ROOT

    def git(*args: str) -> list[str]:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        return done.stdout.splitlines()

    tracked = git("ls-files")
    if not tracked:
        pytest.skip("not a git checkout")
    models = [path for path in tracked if path.startswith("models/") and path.endswith(".keras")]
    cfg = ExportConfig(format=("tflite", "onnx"), quantize=("none", "float16", "int8", "int16x8"))
    defaults = [str(replace(cfg, model=Path(m)).out_path(*target)) for m in models for target in cfg.targets()]
    assert len(defaults) == 5 * len(models) and "models/exports/celeba16k-bce-float32.onnx" in defaults
    assert not set(defaults) & set(tracked)
    assert sorted(git("check-ignore", "--no-index", *defaults)) == sorted(defaults)


def test_a_missing_export_names_the_command_as_typed(tmp_path):
    from celeba.exported import OnnxModel

    with pytest.raises(
        FileNotFoundError, match=r"none.tflite: TFLite model not found \(make one with `celeba export`\)"
    ):
        TFLiteModel(tmp_path / "none.tflite")
    with pytest.raises(FileNotFoundError, match=r"make one with `celeba export --format onnx`"):
        OnnxModel(tmp_path / "none.onnx")
