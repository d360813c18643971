"""The figures show the numbers they are given: each plot is drawn from a small table and its content is read back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from celeba import plots


@pytest.fixture
def drawn(monkeypatch):
    """Keep each figure instead of closing it, and still write the PNG."""
    figures = []

    def keep(fig, path, note=""):
        figures.append(fig)
        fig.savefig(path)
        return path

    monkeypatch.setattr(plots, "save", keep)
    yield figures
    for fig in figures:
        plots.plt.close(fig)


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_cohort_heatmap_cells_are_the_accuracies_and_counts(drawn, tmp_path):
    table = pd.DataFrame(
        {"n": [10, 20, 30], "Young_accuracy": [0.9, 0.25, 0.6]},
        index=["Male & Young", "Male & Not Young", "Not Male & Young"],
    )
    path = plots.cohort_heatmaps({"m": table}, ("Male", "Young"), ["Young"], tmp_path / "h.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    ax = drawn[0].axes[0]
    cells = ax.images[0].get_array()
    # rows: Male, Not Male; columns: Young, Not Young; the missing cohort stays empty (masked)
    assert cells[0, 0] == pytest.approx(0.9) and cells[0, 1] == pytest.approx(0.25)
    assert cells[1, 0] == pytest.approx(0.6) and np.ma.is_masked(cells[1, 1])
    assert _texts(ax) == ["90%\nn=10", "25%\nn=20", "60%\nn=30", "n=0"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Male", "Not Male"]


def test_confusion_grid_counts_and_rates(drawn, tmp_path):
    table = pd.DataFrame(
        {"tn": [8], "fp": [2], "fn": [1], "tp": [9]},
        index=pd.MultiIndex.from_tuples([("Young", "all")], names=["label", "group"]),
    )
    plots.confusion_grid({"m": table}, tmp_path / "c.png")
    ax = drawn[0].axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.8, 0.2], [0.1, 0.9]])
    assert _texts(ax) == ["8\n80%", "2\n20%", "1\n10%", "9\n90%"]


def test_group_accuracy_draws_each_group_at_its_accuracy(drawn, tmp_path):
    groups = pd.DataFrame(
        {
            "model": "m",
            "label": "Male",
            "grouping": ["age", "camera", "camera"],
            "group": ["20-30", "night", "studio"],
            "order": [0, 1, 0],
            "n": [25, 20, 5],
            "accuracy": [0.7, 0.4, 0.8],
            "ci_low": [0.5, 0.2, 0.4],
            "ci_high": [0.85, 0.6, 0.95],
            "small": [False, False, True],
        }
    )  # worst first, as in the report: not the column order
    plots.group_accuracy(groups, ["Male"], tmp_path / "g.png", groupings=["camera", "age"])
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "camera: studio (n=5)",
        "camera: night (n=20)",
        "age: 20-30 (n=25)",
    ]  # column order as given
    filled, hollow = ax.collections[-2:]  # errorbar lines first, then the big and the small groups
    np.testing.assert_allclose(filled.get_offsets(), [[0.7, 2.0], [0.4, 1.0]])
    np.testing.assert_allclose(hollow.get_offsets(), [[0.8, 0.0]])


def test_gradcam_grid_shows_the_images_with_their_captions(drawn, tmp_path):
    images = np.zeros((2, 8, 8, 3), np.uint8)
    images[1] = 255
    plots.gradcam_grid([("row", images, ["p=0.9 y=0", "p=0.1 y=1"])], "t", tmp_path / "s.png")
    axes = drawn[0].axes
    assert [ax.get_title() for ax in axes] == ["p=0.9 y=0", "p=0.1 y=1"]
    assert axes[1].images[0].get_array().min() == 255


def test_latent_by_group_colours_every_point_once(drawn, tmp_path):
    points = np.arange(12, dtype=float).reshape(6, 2)
    plots.latent_by_group(points, {"camera": np.array(["a", "b", "a", "b", "b", "a"])}, "t", tmp_path / "l.png")
    ax = drawn[0].axes[0]
    sizes = {c.get_label(): len(c.get_offsets()) for c in ax.collections}
    assert sizes == {"a (3)": 3, "b (3)": 3}
