"""scripts/learning_curve.py: points from a study and run cards, in train-image order, as a table and a plot."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("learning_curve", ROOT / "scripts" / "learning_curve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cell(average: float, worst: float) -> dict:
    return {"label": "Male", "n": 10, "average": average, "worst": worst, "balanced": average}


def _fixture(tmp_path: Path) -> tuple[Path, list[Path]]:
    study = {
        "big": {"celeba Male": _cell(0.95, 0.90), "celeba Young": _cell(0.87, 0.55)},
        "small": {"celeba Male": _cell(0.90, 0.80), "celeba Young": _cell(0.81, 0.40)},
    }
    (tmp_path / "study.json").write_text(json.dumps(study))
    models = []
    for name, n in (("big", 20000), ("small", 1500)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"data": {"train": n}}))
        models.append(tmp_path / f"{name}.keras")
    return tmp_path / "study.json", models


def test_points_follow_the_train_image_counts_of_the_run_cards(tmp_path):
    study, models = _fixture(tmp_path)
    points = _script().curve_points(json.loads(study.read_text()), models)
    assert [(p["model"], p["train_images"]) for p in points] == [("small", 1500), ("big", 20000)]
    assert points[0]["celeba Young"] == (0.81, 0.40)


def test_the_command_prints_the_table_and_writes_the_plot(tmp_path):
    study, models = _fixture(tmp_path)
    out = tmp_path / "curve.png"
    argv = [sys.executable, str(ROOT / "scripts" / "learning_curve.py"), "--study", str(study), "--out", str(out)]
    for model in models:
        argv += ["--model", str(model)]
    printed = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert "| 1,500 | small | 90.0 / 80.0 | 81.0 / 40.0 |" in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
