"""The analysis report: built end to end on the embedded sample from the tiny model, checked against numpy."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from celeba.analysis import parse_pairs
from celeba.analysis.compute import balancing_thresholds, celeba_balancing_groups, findings, saliency_picks
from celeba.analysis.population import quantile_bins
from celeba.analysis.rates import calibration_curve, wilson_interval
from celeba.analyze import AnalyzeConfig
from celeba.cli import analyze_main
from celeba.data import CelebADataError, load_index, split
from celeba.flags import parse_config

LIMIT = 24
PAIRS = (("Male", "Young"), ("Male", "Eyeglasses"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(tiny_model, sample_dir, tmp_path_factory) -> Path:
    """The same tiny model passed twice (repeated --model flags), through the real command line."""
    out = tmp_path_factory.mktemp("analysis")
    with pytest.raises(SystemExit) as exit_info:
        analyze_main(
            [
                "--model",
                str(tiny_model),
                "--model",
                str(tiny_model),
                "--data-dir",
                str(sample_dir),
                "--partition",
                "test",
                "--limit",
                str(LIMIT),
                "--out",
                str(out),
                "--faces",
                "2",
                "--bins",
                "3",
                "--min-slice",
                "3",
                "--projections",
                "pca",
                "--pairs",
                *(",".join(p) for p in PAIRS),
            ]
        )
    assert exit_info.value.code == 0
    return out


@pytest.mark.slow
def test_every_figure_exists_is_linked_and_is_a_valid_png(report):
    from matplotlib.image import imread
    from PIL import Image

    expected = {
        "cohorts_Male_Young.png",
        "cohorts_Male_Eyeglasses.png",
        "train_distribution.png",
        "confusion.png",
        "latent_pca_tiny.png",
        "latent_pca_tiny-2.png",
        "slices.png",
        "reliability.png",
        "thresholds.png",
        "groups.png",
        "latent_groups_pca_tiny.png",
        *(
            f"gradcam{kind}_{label}_{name}.png"
            for kind in ("", "_errors")
            for label in ("Male", "Young")
            for name in ("tiny", "tiny-2")
        ),
    }
    found = {p.name for p in report.glob("*.png")}
    assert expected <= found
    text = (report / "report.md").read_text()
    linked = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text))
    assert linked == found  # every figure is in the report, every link resolves
    for name in found:
        path = report / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        with Image.open(path) as image:
            image.verify()
        pixels = imread(path)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100 and pixels.std() > 0, name


@pytest.mark.slow
def test_cohort_tables_agree_with_numpy(report, tiny_model, sample_dir):
    from celeba.model import dataset_probabilities, load_model, model_image_size

    rows = split(load_index(sample_dir), "test", LIMIT)
    model, labels = load_model(tiny_model)
    probs = dataset_probabilities(model, rows, labels, model_image_size(model))
    saved = pd.read_csv(report / "predictions.csv", dtype={"image_id": str})
    assert list(saved["image_id"]) == list(rows["image_id"])
    for j, label in enumerate(labels):
        np.testing.assert_allclose(saved[f"tiny:{label}_prob"], probs[:, j], atol=1e-5)

    cohorts = pd.read_csv(report / "cohorts.csv").set_index(["pair", "model", "cohort"])
    correct = (probs >= 0.5) == (rows[list(labels)].to_numpy() == 1)
    for a, b in PAIRS:
        total = 0
        for va in (1, 0):
            for vb in (1, 0):
                mask = (rows[a].to_numpy() == va) & (rows[b].to_numpy() == vb)
                name = f"{'' if va else 'Not '}{a} & {'' if vb else 'Not '}{b}"
                key = (f"{a} x {b}", "tiny-2", name)
                if not mask.any():
                    assert key not in cohorts.index
                    continue
                total += int(mask.sum())
                assert cohorts.at[key, "n"] == mask.sum()
                for j, label in enumerate(labels):
                    assert cohorts.at[key, f"{label}_accuracy"] == pytest.approx(correct[mask, j].mean())
        assert total == LIMIT


@pytest.mark.slow
def test_young_confusion_split_by_gender_adds_up(report):
    table = pd.read_csv(report / "confusion.csv").set_index(["model", "label", "group"])
    counts = ["tn", "fp", "fn", "tp"]
    split_sum = table.loc[("tiny", "Young", "Male"), counts] + table.loc[("tiny", "Young", "Not Male"), counts]
    assert split_sum.tolist() == table.loc[("tiny", "Young", "all"), counts].tolist()
    assert ("tiny", "Male", "Male") not in table.index  # Male is not split by itself
    women = table.loc[("tiny", "Young", "Not Male")]
    assert women["fpr"] == pytest.approx(women["fp"] / max(women["fp"] + women["tn"], 1))


@pytest.mark.slow
def test_delta_of_a_model_with_itself_is_zero(report):
    summary = pd.read_csv(report / "summary.csv", index_col="metric")
    assert {"tiny", "tiny-2", "tiny-2 - tiny"} <= set(summary.columns)
    assert "Young accuracy | Not Male & Young" in summary.index
    np.testing.assert_allclose(summary["tiny-2 - tiny"].dropna(), 0.0)
    thresholds = pd.read_csv(report / "thresholds.csv")
    assert (thresholds["gap_balanced"] <= thresholds["gap"] + 1e-9).all()  # 0.5 is on the search grid


def test_summary_gives_the_worst_group_and_the_group_balanced_accuracy(report):
    """analyze's summary carries, per label, the worst group's and the group-balanced accuracy of its cohorts:
    the min and the mean of the per-cohort rows (the definition repair and the study use, celeba.groups)."""
    summary = pd.read_csv(report / "summary.csv", index_col="metric")["tiny"]
    for label in ("Male", "Young"):
        cohorts = summary[[i for i in summary.index if i.startswith(f"{label} accuracy | ")]]
        assert len(cohorts) == 4
        worst = summary[[i for i in summary.index if i.startswith(f"{label} worst group over ")]]
        balanced = summary[[i for i in summary.index if i.startswith(f"{label} group-balanced accuracy over ")]]
        assert worst.item() == pytest.approx(cohorts.min())
        assert balanced.item() == pytest.approx(cohorts.mean())


def test_balancing_threshold_recovers_a_shifted_cohort():
    # Women's scores run low: at 0.5 every young woman is missed; anything in (0.2, 0.45] is perfect for all.
    frame = pd.DataFrame({"Male": [1, 1, 1, 1, 0, 0, 0, 0], "Young": [1, 1, 0, 0, 1, 1, 0, 0]})
    y = frame[["Young"]].to_numpy(float)
    p = np.array([[0.8], [0.9], [0.2], [0.1], [0.45], [0.4], [0.1], [0.05]])
    table = balancing_thresholds(y, p, ["Young"], celeba_balancing_groups(frame, ["Young"], ["Male", "Young"]))
    row = table.loc["Young"]
    assert row["cohorts"] == "Male"  # Young is balanced across genders, not across its own classes
    assert row["gap"] == pytest.approx(0.5) and row["worst_cohort"] == "Not Male"
    assert 0.2 < row["balancing_threshold"] <= 0.45
    assert row["gap_balanced"] == 0 and row["accuracy_balanced"] == 1


def test_balancing_threshold_does_not_buy_balance_with_accuracy():
    # Scores separate young men well and young women barely: predicting "not Young" for everyone has no gap.
    rng = np.random.default_rng(1)
    male = rng.integers(0, 2, 2000)
    young = rng.integers(0, 2, 2000)
    p = np.clip(0.5 + (young - 0.5) * np.where(male == 1, 0.6, 0.1) + rng.normal(0, 0.15, 2000), 0, 1)
    y = young[:, None].astype(float)
    groups = {"Young": ("Male", np.where(male == 1, "Male", "Not Male"))}
    free = balancing_thresholds(y, p[:, None], ["Young"], groups, tolerance=1.0).loc["Young"]
    kept = balancing_thresholds(y, p[:, None], ["Young"], groups, tolerance=0.02).loc["Young"]
    best = max(((p >= t) == (young == 1)).mean() for t in np.round(np.arange(0.02, 0.99, 0.01), 2))
    assert kept["accuracy_balanced"] >= best - 0.02
    assert free["gap_balanced"] <= kept["gap_balanced"] and free["accuracy_balanced"] < best - 0.02


def test_calibration_curve_and_ece():
    curve, ece = calibration_curve(np.ones(10), np.full(10, 0.9))
    assert ece == pytest.approx(0.1) and curve["n"].sum() == 10
    rng = np.random.default_rng(0)
    p = rng.uniform(size=20_000)
    _, ece = calibration_curve((rng.uniform(size=p.size) < p).astype(float), p)
    assert ece < 0.02


def test_ece_weights_each_bin_by_its_share_of_the_samples():
    # 90 samples at 0.95 (all positive: gap 0.05) and 10 at 0.15 (all positive: gap 0.85).
    y = np.ones(100)
    p = np.r_[np.full(90, 0.95), np.full(10, 0.15)]
    curve, ece = calibration_curve(y, p)
    assert curve["n"].tolist() == [10, 90]
    assert ece == pytest.approx(0.9 * 0.05 + 0.1 * 0.85)  # 0.13; an unweighted mean of the bins would say 0.45


def test_wilson_interval_matches_the_closed_form():
    low, high = wilson_interval(np.array([0, 5, 20]), np.array([10, 10, 20]))
    assert low[0] == pytest.approx(0, abs=1e-12) and high[0] == pytest.approx(0.2775, abs=1e-4)  # not [0, 0]
    assert (low[1], high[1]) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert high[2] == pytest.approx(1) and low[2] == pytest.approx(0.8389, abs=1e-4)
    assert np.isnan(wilson_interval(0, 0)[0])


def test_saliency_picks():
    y = np.array([1, 0, 1, 0, 1.0])
    p = np.array([0.9, 0.8, 0.1, 0.2, 0.6])
    picks = saliency_picks(y, p, 2, 0.5)
    assert picks["highest"].tolist() == [0, 1] and picks["lowest"].tolist() == [2, 3]
    assert picks["errors"].tolist() == [2, 1]  # |0.1 - 1| > |0.8 - 0|


def test_repeated_model_flags_and_bad_pairs():
    cfg = parse_config(AnalyzeConfig, ["--model", "a.keras", "--limit", "3", "--model=b.keras"])
    assert cfg.model == (Path("a.keras"), Path("b.keras")) and cfg.limit == 3
    assert parse_config(AnalyzeConfig, ["--model", "a", "b"]).model == (Path("a"), Path("b"))
    with pytest.raises(CelebADataError, match="--pairs"):
        parse_pairs(["Male"])
    with pytest.raises(CelebADataError, match="Mail"):
        parse_pairs(["Mail,Young"])


def test_missing_model_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        analyze_main(["--model", str(tmp_path / "nope.keras"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "nope.keras: model file not found" in capsys.readouterr().err


def test_findings_name_the_worst_cohort_and_whether_the_gap_closed():
    def cohorts(young_women: float) -> pd.DataFrame:
        return pd.DataFrame(
            {"n": [40, 20], "Young_accuracy": [0.9, young_women]}, index=["Male & Young", "Not Male & Young"]
        )

    confusion = pd.DataFrame(
        {"fpr": [0.2, 0.5]}, index=pd.MultiIndex.from_tuples([("Young", "Male"), ("Young", "Not Male")])
    )
    lines = findings(
        {"bce": cohorts(0.6), "weighted": cohorts(0.8)}, {"bce": confusion, "weighted": confusion}, ["Young"]
    )
    assert "bce: Young accuracy ranges from 60.0% (Not Male & Young, n=20) to 90.0% (Male & Young, n=40)" in lines[0]
    assert "a gap of 30.0 pts" in lines[0]  # percentage points, not a relative change
    assert "false-positive rate 50.0% (Not Male) vs 20.0% (Male)" in lines[1]
    assert lines[-1] == "Young cohort gap 30.0 pts (bce) -> 10.0 pts (weighted): narrower by 20.0 pts."


def test_findings_leave_cohorts_under_30_images_out_of_the_headline_gap():
    table = pd.DataFrame(
        {"n": [200, 150, 12], "Young_accuracy": [0.9, 0.8, 0.1]},
        index=["Male & Young", "Not Male & Young", "Not Male & Not Young"],
    )
    line = findings({"m": table}, {"m": pd.DataFrame({"fpr": []})}, ["Young"])[0]
    assert "from 80.0% (Not Male & Young, n=150) to 90.0% (Male & Young, n=200), a gap of 10.0 pts" in line
    assert "left out, under 30 images: Not Male & Not Young (n=12)" in line


def test_quantile_bins_keep_every_row_in_order():
    values = pd.Series([5.0, 1, 4, 2, 6, 3, np.nan])
    bins = quantile_bins(values, 3)
    assert list(bins.cat.categories) == ["1-2", "3-4", "5-6", "unknown"]
    assert bins.astype(str).tolist() == ["5-6", "1-2", "3-4", "1-2", "5-6", "3-4", "unknown"]


def test_a_missing_umap_is_said_once_at_debug_level_and_an_installed_one_is_used(tmp_path, monkeypatch, caplog):
    import importlib.util
    import logging
    import sys

    import numpy as np

    from celeba.analysis import figures

    figures.umap_installed.cache_clear()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "umap" else real(name, *a))
    with caplog.at_level(logging.DEBUG, logger="celeba"):
        assert figures.available_projections(["pca", "umap"]) == ["pca"]
        assert figures.available_projections(["umap", "tsne"]) == ["tsne"]
    said = [r for r in caplog.records if "umap" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.DEBUG
    monkeypatch.undo()

    (tmp_path / "umap.py").write_text(  # a stand-in for umap-learn: the projection uses whatever `umap.UMAP` is
        "import numpy as np\n"
        "class UMAP:\n"
        "    def __init__(self, n_components, random_state):\n"
        "        self.n = n_components\n"
        "    def fit_transform(self, x):\n"
        "        return np.full((len(x), self.n), 7.0)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "umap", raising=False)
    figures.umap_installed.cache_clear()
    assert figures.available_projections(["pca", "umap"]) == ["pca", "umap"]
    points = figures.project(np.random.default_rng(0).normal(size=(20, 8)), "umap")
    assert points.shape == (20, 2) and (points == 7.0).all()
    figures.umap_installed.cache_clear()
