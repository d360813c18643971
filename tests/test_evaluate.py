"""Evaluation writes tables whose numbers agree with a direct recomputation from its predictions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from celeba.cli import evaluate_main
from celeba.config import EvalConfig
from celeba.evaluate import evaluate, write_evaluation


def test_evaluate_writes_consistent_reports(tiny_model, tmp_path, capsys):
    out = tmp_path / "report"
    result = evaluate(EvalConfig(model=tiny_model, partition="test", out=out, check_images=False))
    assert not out.exists()  # evaluate computes; write_evaluation writes
    assert "accuracy" in result.metrics.columns and "Not Male & Young" in result.table.index
    written = write_evaluation(result, out)
    assert {p.name for p in out.iterdir()} == {p.name for p in written}
    assert {p.name for p in written} == {"metrics.json", "metrics.csv", "cohorts.csv", "predictions.csv"}

    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == result.n == 50 and (predictions["partition"] == "test").all()
    for label in ("Male", "Young"):
        t, p = predictions[f"{label}_true"], predictions[f"{label}_prob"]
        assert np.isclose(result.labels[label]["accuracy"], ((p >= 0.5) == (t == 1)).mean())
        assert np.isclose(result.labels[label]["roc_auc"], roc_auc_score(t, p))
    assert json.loads((out / "metrics.json").read_text())["cohorts"] == result.summary()["cohorts"]
    cohorts = pd.read_csv(out / "cohorts.csv", index_col=0)
    assert cohorts["n"].sum() == 50 and len(cohorts) == 4


def test_evaluate_command_prints_the_tables(tiny_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(["--model", str(tiny_model), "--limit", "8", "--out", str(tmp_path), "--no-check-images"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "on test (8 images)" in printed and "accuracy per cohort" in printed
    assert f"wrote {tmp_path}/metrics.json" in printed


def test_only_the_images_it_scores_are_checked(tiny_model, tmp_path, monkeypatch):
    """--check-images decodes the rows to be scored (here the first 8 test images), not all 299 of the folder."""
    import celeba.data.images

    checked: list[str] = []
    decode = celeba.data.images._image_problem
    monkeypatch.setattr(celeba.data.images, "_image_problem", lambda path: checked.append(path) or decode(path))
    result = evaluate(EvalConfig(model=tiny_model, limit=8, out=tmp_path))
    assert result.n == 8 and len(checked) == 8


def test_tta_averages_each_image_with_its_mirror(lopsided_model, tmp_path):
    """--tta: the probabilities are the mean of the plain model's for the image and for its mirror image, recomputed
    here by hand; a folder of photos is refused with a pointer to predict --tta."""

    from celeba.data import load_index, make_dataset, split
    from celeba.model import load_model, model_image_size

    plain = evaluate(EvalConfig(model=lopsided_model, limit=16, check_images=False))
    tta = evaluate(EvalConfig(model=lopsided_model, limit=16, check_images=False, tta=True))
    assert tta.tta and not plain.tta and tta.summary()["tta"] is True
    write_evaluation(plain, tmp_path / "plain")
    write_evaluation(tta, tmp_path / "tta")
    model, labels = load_model(lopsided_model)
    rows = split(load_index(EvalConfig().data_dir), "test", 16)
    images = np.concatenate([x for x, _ in make_dataset(rows, labels, model_image_size(model), 16, training=False)])
    by_hand = (model.predict(images, verbose=0) + model.predict(images[:, :, ::-1], verbose=0)) / 2
    got = pd.read_csv(tmp_path / "tta" / "predictions.csv")[["Male_prob", "Young_prob"]].to_numpy()
    np.testing.assert_allclose(got, by_hand, atol=1e-5)
    before = pd.read_csv(tmp_path / "plain" / "predictions.csv")[["Male_prob", "Young_prob"]].to_numpy()
    assert np.abs(got - before).max() > 1e-4  # the mirror changed something: not the plain model again
    with pytest.raises(ValueError, match="--tta: for a CelebA partition"):
        EvalConfig(images=tmp_path, tta=True)
