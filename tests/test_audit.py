"""Audit on your own photos: labelled folders (CSV or file-name pattern), derived labels, groups whose error rate is
known by construction, faces counted, and the whole command on a generated folder of re-framed sample photos."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from celeba.analysis.compute import compute
from celeba.analysis.population import folder_population, quantile_bins
from celeba.analysis.rates import wilson_interval
from celeba.data import CelebADataError
from celeba.population import NO_FACE, ONE_FACE, SEVERAL_FACES, UNREADABLE

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "celeba8k-bce.keras"  # committed; works on the sample


def _folder(tmp_path: Path, names: list[str]) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"")  # the population reads names only; nothing is decoded here
    return folder


def test_labels_csv_gives_truth_groups_and_skipped_files(tmp_path):
    folder = _folder(tmp_path, [f"{i}.jpg" for i in range(12)] + ["not_listed.jpg"])
    csv = tmp_path / "labels.csv"
    pd.DataFrame(
        {
            "file": [f"{i}.jpg" for i in range(12)] + ["missing.jpg"],
            "Male": ["1", "0", ""] * 4 + ["1"],
            "skin_tone": ["I", "II", "III", ""] * 3 + ["I"],
            "age": [str(20 + 5 * i) for i in range(12)] + ["30"],
        }
    ).to_csv(csv, index=False)
    pop = folder_population(folder, labels_csv=csv, bins=3)
    rows = pop.rows
    assert len(rows) == 12 and list(pop.skipped["file"]) == ["missing.jpg"]
    assert rows["Male"].tolist()[:2] == [1.0, 0.0] and np.isnan(rows["Male"].iloc[2])
    assert rows["Male"].isna().sum() == 4  # empty = unknown, never a guess
    assert pop.groups == ("skin_tone", "age", "Male")
    assert rows["group:skin_tone"].astype(str).tolist()[:4] == ["I", "II", "III", "unknown"]
    assert list(rows["group:age"].cat.categories) == ["18-29", "30-44", "45-59", "60+"]  # age: the age bands
    assert rows["group:Male"].astype(str).tolist()[:3] == ["Male", "Not Male", "unknown"]
    assert ("skin_tone", "age") in pop.pairs and pop.detect
    assert pop.derivations == {"Male": "column Male of labels.csv"}


def test_utkface_style_file_names_with_derived_labels_and_names(tmp_path):
    """UTKFace names its files [age]_[gender]_[race]_[date&time].jpg, gender 0 = male, 1 = female."""
    names = [
        "25_0_2_20170116174525125.jpg",
        "71_1_0_20170109150557335.jpg",
        "8_1_4_20170103200814791.jpg",
        "39_1_20170116174525125.jpg",
    ]  # the last has no race: listed as skipped, not guessed
    folder = _folder(tmp_path, names)
    pop = folder_population(
        folder,
        filename_pattern="{age}_{gender}_{race}_*.jpg",
        derive=["Male=gender==0", "Young=age<30"],
        mapping=["race:0=White,1=Black,2=Asian,3=Indian,4=Others"],
    )
    rows = pop.rows.set_index("image_id")
    assert rows.loc[names[0], "Male"] == 1 and rows.loc[names[1], "Male"] == 0
    assert rows["Young"].tolist() == [1.0, 0.0, 1.0]
    assert rows["group:race"].astype(str).tolist() == ["Asian", "White", "Others"]
    assert pop.skipped["file"].tolist() == [names[3]]
    assert pop.derivations["Young"] == "derived: Young := age<30"
    # derived labels are not group columns again: `age` (its bands) and `gender` already are
    assert pop.groups == ("age", "gender", "race")
    assert rows["group:age"].astype(str).tolist() == ["18-29", "60+", "5-12"]  # the child keeps a band of its own


def test_age_bands_keep_children_visible_where_quantiles_hide_them(tmp_path):
    """2 children among 40 adults: quantile bins put them in the youngest adults' bin; the bands keep them apart,
    and `--age-bands` cuts where the user says."""
    ages = [3, 9] + [20 + i for i in range(40)]
    folder = _folder(tmp_path, [f"{a}_{i}.jpg" for i, a in enumerate(ages)])
    quantiles = quantile_bins(pd.Series(ages, dtype=float), 5)
    assert quantiles.iloc[0] == quantiles.iloc[2]  # the old way: the children share a bin with adults
    pop = folder_population(folder, filename_pattern="{age}_*.jpg", bins=5)
    assert list(pop.rows["group:age"].cat.categories) == ["0-4", "5-12", "18-29", "30-44", "45-59"]
    assert pop.rows["group:age"].astype(str).value_counts()[["0-4", "5-12"]].tolist() == [1, 1]
    mine = folder_population(folder, filename_pattern="{age}_*.jpg", age_starts=(0, 13, 18, 30, 45, 60))
    assert list(mine.rows["group:age"].cat.categories) == ["0-12", "18-29", "30-44", "45-59"]
    with pytest.raises(CelebADataError, match="--age-bands 5 18: the first age of every band, from 0"):
        folder_population(folder, filename_pattern="{age}_*.jpg", age_starts=(5, 18))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"derive": ["Young=height<30"]}, "names no column"),
        ({"derive": ["Young=age+1"]}, "true/false condition"),
        ({"derive": ["Elderly=age>70"]}, "not a CelebA attribute"),
        ({"mapping": ["gender=0:male"]}, "--map"),
    ],
)
def test_bad_derivations_and_mappings_are_one_clear_error(tmp_path, kwargs, message):
    folder = _folder(tmp_path, ["25_0_2_x.jpg"])
    with pytest.raises(CelebADataError, match=message):
        folder_population(folder, filename_pattern="{age}_{gender}_{race}_*.jpg", **kwargs)


def test_bad_label_value_names_the_file_and_row(tmp_path):
    folder = _folder(tmp_path, ["a.jpg", "b.jpg"])
    csv = tmp_path / "labels.csv"
    csv.write_text("file,Male\na.jpg,1\nb.jpg,maybe\n")
    with pytest.raises(CelebADataError, match=r"labels.csv: column 'Male' must be 0, 1 or empty; row 3 is 'maybe'"):
        folder_population(folder, labels_csv=csv)
    csv.write_text("name,Male\na.jpg,1\n")
    with pytest.raises(CelebADataError, match="no 'file' column"):
        folder_population(folder, labels_csv=csv)
    with pytest.raises(CelebADataError, match="exactly one of"):
        folder_population(folder)


def test_a_photo_the_face_detector_refuses_is_counted_unreadable_not_a_crash(tmp_path, monkeypatch):
    import cv2
    from PIL import Image

    import celeba.predict as predict
    from celeba.analysis.scoring import prepare_faces

    for name, size in (("plain.png", (120, 90)), ("odd.png", (300, 200))):
        Image.new("RGB", size, (120, 100, 90)).save(tmp_path / name)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")

    def find_faces(rgb, *args, **kwargs):
        if rgb.shape[:2] == (200, 300):  # OpenCV refusing an image's shape used to abort the whole audit
            raise cv2.error("OpenCV(4.x) error: (-215:Assertion failed)")
        return []

    monkeypatch.setattr(predict, "find_faces", find_faces)
    status, crops = prepare_faces([str(tmp_path / n) for n in ("plain.png", "odd.png", "broken.jpg")], detect=True)
    assert status.tolist() == [NO_FACE, UNREADABLE, UNREADABLE] and crops == [None, None, None]


def test_report_ranks_the_group_with_known_errors_worst_and_counts_every_photo(tmp_path):
    """site B: 4 wrong answers and 1 photo without a face in 10; site C is worse but below --min-slice."""
    sites = ["A"] * 10 + ["B"] * 10 + ["C"] * 4
    folder = _folder(tmp_path, [f"{i}.jpg" for i in range(len(sites))])
    truth = np.tile([1, 0], 12)
    csv = tmp_path / "labels.csv"
    pd.DataFrame({"file": [f"{i}.jpg" for i in range(len(sites))], "Male": truth, "site": sites}).to_csv(
        csv, index=False
    )
    pop = folder_population(folder, labels_csv=csv)
    p = np.where(truth == 1, 0.9, 0.1).astype(float)
    wrong_b, wrong_c = [10, 11, 12, 13], [20, 21]
    p[wrong_b + wrong_c] = 1 - p[wrong_b + wrong_c]
    p[14] = np.nan  # no face found in photo 14 (site B)
    status = pd.Series([ONE_FACE] * len(sites))
    status[14], status[15] = NO_FACE, SEVERAL_FACES
    analysis = compute(pop, ["Male"], {"m": p[:, None]}, status, min_slice=5)

    sites_table = analysis.groups[analysis.groups["grouping"] == "site"].set_index("group")
    assert sites_table.index[0] == "B"  # worst first among the big groups; C comes after, flagged small
    b = sites_table.loc["B"]
    assert (b["n"], b["errors"], b["no_face"], b["several_faces"], b["scored"]) == (10, 5, 1, 1, 9)
    assert b["accuracy"] == pytest.approx(0.5)
    assert (b["ci_low"], b["ci_high"]) == tuple(pytest.approx(v) for v in wilson_interval(5, 10))
    assert b["fpr"] == pytest.approx(2 / 5) and b["fnr"] == pytest.approx(2 / 4)  # over the 9 scored faces
    assert sites_table.loc["C", "small"] and not sites_table.loc["B", "small"]
    assert sites_table.loc["A", "accuracy"] == 1.0
    worst = analysis.worst()
    assert "C" not in set(worst["group"]) and "C" in set(analysis.small()["group"])
    assert any("site = B: 50.0% (95% CI" in line and "n=10" in line for line in analysis.findings)
    overall = analysis.groups[analysis.groups["grouping"] == "all"].iloc[0]
    assert (overall["n"], overall["errors"]) == (24, 7)  # the face-less photo stays in the denominator
    pairs = analysis.groups[analysis.groups["grouping"] == "site x Male"]
    assert pairs.set_index("group").loc["B & Male", "n"] == 5
    faces = analysis.faces.loc[("site", "B")]
    assert (faces["photos"], faces[NO_FACE], faces[SEVERAL_FACES]) == (10, 1, 1)
    assert analysis.thresholds.loc[("m", "Male"), "cohorts"] == "site"  # balanced across sites


def test_a_photo_without_a_face_is_an_error_never_a_positive():
    """A photo with no face scored (NaN probability) counts in n as an error, whatever its truth: a positive photo
    is not 'called positive', a negative one not 'called negative'; the rates are over the scored faces only."""
    from celeba.analysis.rates import rate_metrics

    truth = np.array([1.0, 1.0, 0.0, 0.0])
    probs = np.array([np.nan, 0.9, np.nan, 0.1])
    m = rate_metrics(truth, probs)
    assert (m["n"], m["scored"], m["errors"]) == (4, 2, 2) and m["accuracy"] == pytest.approx(0.5)
    assert m["fnr"] == 0.0 and m["fpr"] == 0.0  # the two scored faces are right
    alone = rate_metrics(np.array([1.0]), np.array([np.nan]))
    assert (alone["errors"], alone["accuracy"]) == (1, 0.0) and np.isnan(alone["fnr"])


def _audit_folder_module():
    spec = importlib.util.spec_from_file_location("audit_folder", ROOT / "scripts" / "audit_folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def audit_folder(sample_dir, tmp_path_factory) -> tuple[Path, Path]:
    """30 re-framed sample test images (every second one dim), a wall, two faces in one photo, a broken file."""
    from celeba.data import load_index, split

    rows = split(load_index(sample_dir), "test", 30)
    folder = tmp_path_factory.mktemp("audit") / "photos"
    return folder, _audit_folder_module().make_audit_folder(rows, folder, extras=True, brightness=0.15, blur=6.0)


def _folder_args(folder: Path, csv: Path) -> list[str]:
    return ["--model", str(MODEL), "--images", str(folder), "--labels-csv", str(csv)]


@pytest.mark.slow
def test_analyze_images_on_a_generated_folder_ranks_the_dim_photos_worst(audit_folder, tmp_path, capsys):
    from celeba.cli import analyze_main

    folder, csv = audit_folder
    out = tmp_path / "report"
    flags = ["--projections", "pca", "--faces", "1", "--min-slice", "5", "--bins", "2"]
    with pytest.raises(SystemExit) as exit_info:
        analyze_main([*_folder_args(folder, csv), "--out", str(out), *flags])
    printed = capsys.readouterr()
    assert exit_info.value.code == 0, printed.err[-2000:]
    assert f"wrote {out / 'report.md'}" in printed.out

    faces = pd.read_csv(out / "faces.csv").set_index(["grouping", "group"])
    assert faces.loc[("all", "all"), "photos"] == 33  # 30 photos + wall + two faces + broken: nothing dropped
    assert faces.loc[("all", "all"), UNREADABLE] == 1 and faces.loc[("all", "all"), NO_FACE] >= 1
    assert faces.loc[("all", "all"), SEVERAL_FACES] >= 1

    groups = pd.read_csv(out / "groups.csv")
    male = groups[(groups["label"] == "Male") & (groups["grouping"] == "lighting")].set_index("group")
    assert male.index[0] == "dim" and male.loc["dim", "accuracy"] < male.loc["normal", "accuracy"]
    predictions = pd.read_csv(out / "predictions.csv")
    for group in ("dim", "normal"):
        part = predictions[predictions["group:lighting"] == group]
        prob = part["celeba8k-bce:Male_prob"]
        correct = ((prob >= 0.5) == (part["Male"] == 1)) & prob.notna()
        assert male.loc[group, "n"] == len(part) == (15 if group == "dim" else 18)
        assert male.loc[group, "errors"] == len(part) - correct.sum()
    report = (out / "report.md").read_text()
    assert "lighting" in report and "![groups](groups.png)" in report and "unreadable" in report
    assert {"gradcam_errors_Male_celeba8k-bce.png", "latent_groups_pca_celeba8k-bce.png"} <= {
        p.name for p in out.glob("*.png")
    }


@pytest.mark.slow
def test_evaluate_images_counts_faces_and_reports_groups(audit_folder, tmp_path, capsys):
    from celeba.cli import evaluate_main

    folder, csv = audit_folder
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(
            [
                *_folder_args(folder, csv),
                "--out",
                str(tmp_path),
                "--min-slice",
                "5",
                "--derive",
                "Young=face_px<300",
            ]
        )
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "Young: derived: Young := face_px<300" in printed and "accuracy per group, worst first" in printed
    assert f"on {folder} with {csv} (33 photos)\n" in printed and "images)" not in printed  # counted once
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["n"] == 33 and result["faces"]["photos"] == 33 and result["faces"]["unreadable"] == 1
    groups = pd.read_csv(tmp_path / "groups.csv")
    light = groups[(groups["label"] == "Male") & (groups["grouping"] == "lighting")]
    assert light["n"].sum() == 33 and light.iloc[0]["group"] == "dim"
    truth = pd.read_csv(csv)
    young = pd.read_csv(tmp_path / "predictions.csv")["Young"]
    assert young.tolist() == (truth["face_px"] < 300).astype(float).tolist()


def test_each_model_caption_says_how_it_was_trained():
    """The committed balanced-sampling and plain models share loss, init, size and epochs: the caption must still
    tell them apart (it used to read the same for both)."""
    from celeba.analysis.scoring import describe
    from celeba.runcard import RunCard

    plain, balanced = (describe(RunCard.load(ROOT / "models" / f"celeba16k-{n}.json")) for n in ("bce", "balanced"))
    assert plain.startswith("loss bce, natural sampling, ImageNet init, 96 px") and "train images" in plain
    assert balanced.startswith("loss bce, balanced sampling, ImageNet init, 96 px")
    focal = describe(RunCard.load(ROOT / "models" / "celeba16k-focal.json"))
    assert focal.startswith("loss focal, natural sampling")
    repaired = RunCard.load(ROOT / "models" / "celeba16k-bce.json")
    repaired.extra["repair"] = {"method": "dfr (group-balanced last layer)", "labels": ["Male"], "groups": ["race"]}
    repaired.config = {**repaired.config, "loss": "group-dro", "groups": ["Male", "Young"], "select_by": "worst_group"}
    text = describe(repaired)
    assert text.startswith("loss group-dro over Male x Young, natural sampling") and "worst-group" in text
    assert text.endswith("last layer re-fit for Male by dfr (group-balanced last layer) over race")
    assert describe(None) == "no run card: how it was trained is unknown"


def test_report_names_the_gap_narrowing_threshold_and_the_command_as_typed(tmp_path):
    from celeba.analysis.report import header, sections

    folder = _folder(tmp_path, [f"{i}.jpg" for i in range(8)])
    csv = tmp_path / "labels.csv"
    pd.DataFrame({"file": [f"{i}.jpg" for i in range(8)], "Male": [1, 0] * 4, "site": ["A"] * 4 + ["B"] * 4}).to_csv(
        csv, index=False
    )
    pop = folder_population(folder, labels_csv=csv)
    p = np.array([[0.9], [0.1], [0.8], [0.3], [0.6], [0.4], [0.45], [0.55]])
    analysis = compute(pop, ["Male"], {"m": p}, pd.Series([ONE_FACE] * 8), min_slice=2)
    assert "`celeba analyze`" in header(analysis) and "poetry run" not in header(analysis)
    title, text, _, tables = sections(analysis, {}, 0.02)[-1]
    assert title == "Calibration, and the threshold that narrows each label's gap between groups"
    caption, table = tables[1]
    assert caption == "gap-narrowing threshold per label"
    assert table.loc[("m", "Male"), "across"] == "site" and "gap-narrowing threshold" in table.columns
    assert not any("balanc" in column for column in table.columns)
