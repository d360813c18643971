"""The Tensorleap integration: code-loader's own checks (leap_test.py), the binder's encoders, and the
project files (leap.yaml, requirements.txt) kept in step with the code."""

from __future__ import annotations

import ast
import importlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from celeba import data, image_stats, losses, metrics

ROOT = Path(__file__).resolve().parent.parent


def run_leap_test(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """leap_test.py in its own process, as a user runs it (code-loader keeps global state per process)."""
    env = {**os.environ, "TL_DISABLE_ANALYTICS": "true", "TF_CPP_MIN_LOG_LEVEL": "2", **env}
    return subprocess.run([sys.executable, "leap_test.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_leap_test_passes_check_dataset_and_integration_test_on_every_partition(tiny_model):
    result = run_leap_test({"CELEBA_LEAP_MODEL": str(tiny_model)}, "--samples", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    table = {line.split("|")[0].strip(): line.split("|")[1].strip()
             for line in result.stdout.splitlines() if line.count("|") == 1}
    for check in ("integration_test", "preprocess", "image", "labels", "attribute_Male", "attribute_Young",
                  "sample_cohort", "sample_partition", "sample_identity", "image_mean_luminance",
                  "image_sharpness", "image_file_kb"):
        assert table.get(check) == "pass", check
    assert sum(name.startswith("attribute_") for name in table) == len(data.ATTRIBUTES)
    ran = [name for name in table if name.startswith("integration_test[")]
    assert {name.split("[")[1].split(":")[0] for name in ran} == {"training", "validation", "test"}
    assert all(table[name] == "pass" for name in ran)


def test_leap_test_exits_non_zero_and_names_the_problem(tmp_path, tiny_model):
    missing = tmp_path / "no-celeba-here"
    result = run_leap_test({"CELEBA_LEAP_MODEL": str(tiny_model), "CELEBA_DATA_DIR": str(missing)})
    assert result.returncode == 1
    assert "FAIL" in result.stdout and str(missing) in result.stdout


# --------------------------------------------------------------------------- the binder, in-process


@pytest.fixture
def binder(tiny_model, monkeypatch):
    monkeypatch.setenv("CELEBA_LEAP_MODEL", str(tiny_model))
    monkeypatch.delenv("CELEBA_DATA_DIR", raising=False)
    monkeypatch.syspath_prepend(str(ROOT))
    module = importlib.import_module("leap_binder")
    assert module.LABELS == ("Male", "Young") and module.IMAGE_SIZE == 64  # from the tiny model's run card
    return module


@pytest.fixture
def responses(binder):
    return {r.state.value: r for r in binder.preprocess()}


def test_preprocess_gives_every_partition_with_file_names_as_ids(binder, responses, sample_dir):
    index = data.load_index(sample_dir)
    assert set(responses) == {"training", "validation", "test"}
    for state, partition in (("training", "train"), ("validation", "validation"), ("test", "test")):
        assert responses[state].sample_ids == data.split(index, partition)["image_id"].tolist()
    last = responses["training"].sample_ids[-1]
    assert responses["training"].data.row(last)["image_id"].iat[0] == last


def test_encoders_use_the_training_preprocessing_and_labels(binder, responses):
    train = responses["training"]
    for sample_id in (train.sample_ids[0], train.sample_ids[-1]):
        row = train.data.row(sample_id)
        image = binder.input_image(sample_id, train)
        assert image.dtype == np.float32 and image.shape == (64, 64, 3)
        np.testing.assert_array_equal(image, data.load_image(row["path"].iat[0], 64).numpy())
        gt = binder.gt_labels(sample_id, train)
        assert gt.dtype == np.float32
        np.testing.assert_array_equal(gt, row[["Male", "Young"]].to_numpy(np.float32)[0])


def test_metadata_covers_attributes_cohort_identity_and_image_statistics(binder, responses):
    test = responses["test"]
    sample_id = test.sample_ids[3]
    row = test.data.row(sample_id)
    attributes = binder.metadata_attributes(sample_id, test)
    assert list(attributes) == list(data.ATTRIBUTES)
    assert attributes == {name: int(row[name].iat[0]) for name in data.ATTRIBUTES}
    sample = binder.metadata_sample(sample_id, test)
    assert sample["cohort"] == metrics.cohort_names(row).iat[0]
    assert sample["partition"] == "test" and sample["identity"] == int(row["identity"].iat[0])
    assert not any(key.startswith("pose") for key in sample)  # the embedded sample has no landmarks file
    assert binder.metadata_image(sample_id, test) == pytest.approx(image_stats.file_statistics(row["path"].iat[0]))


def write_landmarks(path: Path, rows: dict[str, tuple[float, ...]], declared: int | None = None) -> None:
    lines = [str(len(rows) if declared is None else declared), " ".join(data.LANDMARKS)]
    lines += [f"{image_id} " + " ".join(str(v) for v in values) for image_id, values in rows.items()]
    path.write_text("\n".join(lines) + "\n")


FRONTAL = (70, 110, 110, 110, 90, 130, 75, 150, 105, 150)  # eyes 40 px apart, nose centred, half-way down
TURNED = (70, 110, 110, 110, 100, 130, 75, 150, 105, 150)  # nose 10 px right of the eyes' midpoint


@pytest.fixture
def landmarked_dir(tmp_path, sample_dir):
    """The sample's layout plus a generated landmarks file (one image deliberately left out)."""
    folder = tmp_path / "celeba"
    folder.mkdir()
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt", "identity_CelebA.txt"):
        shutil.copy(sample_dir / name, folder / name)
    (folder / data.IMAGE_DIR).symlink_to(sample_dir / data.IMAGE_DIR)
    ids = data.load_index(sample_dir)["image_id"].tolist()
    rows = {image_id: FRONTAL for image_id in ids[1:]} | {ids[1]: TURNED}
    write_landmarks(folder / data.LANDMARKS_FILE, rows)
    return folder, ids


def test_pose_proxies_appear_where_the_landmarks_file_exists(binder, landmarked_dir, monkeypatch):
    folder, ids = landmarked_dir
    monkeypatch.setenv("CELEBA_DATA_DIR", str(folder))
    by_id = {sid: r for r in binder.preprocess() for sid in r.sample_ids}
    frontal = binder.metadata_sample(ids[2], by_id[ids[2]])
    assert frontal["pose_yaw"] == pytest.approx(0.0) and frontal["pose_roll"] == pytest.approx(0.0)
    assert frontal["pose_pitch"] == pytest.approx(0.5) and frontal["eye_distance"] == pytest.approx(40.0)
    assert binder.metadata_sample(ids[1], by_id[ids[1]])["pose_yaw"] == pytest.approx(0.25)
    unknown = binder.metadata_sample(ids[0], by_id[ids[0]])
    assert unknown["pose_yaw"] is None and unknown["cohort"]  # no landmarks row: None, the rest still there


def test_read_landmarks_rejects_truncated_and_non_numeric_files(tmp_path):
    path = tmp_path / data.LANDMARKS_FILE
    write_landmarks(path, {"000001.jpg": FRONTAL, "000002.jpg": TURNED})
    frame = data.read_landmarks(path)
    assert frame.loc["000002.jpg", "nose_x"] == 100 and list(frame.columns) == list(data.LANDMARKS)
    write_landmarks(path, {"000001.jpg": FRONTAL}, declared=5)
    with pytest.raises(data.CelebADataError, match="declares 5 rows but has 1"):
        data.read_landmarks(path)
    write_landmarks(path, {"000001.jpg": ("x",) + FRONTAL[1:]})
    with pytest.raises(data.CelebADataError, match=r"000001\.jpg.*not numeric"):
        data.read_landmarks(path)


def test_losses_are_the_training_losses_per_sample(binder, sample_dir):
    gt = np.array([[1, 0], [0, 1]], np.float32)
    prediction = np.array([[0.9, 0.2], [0.3, 0.6]], np.float32)
    expected = -np.mean(gt * np.log(prediction) + (1 - gt) * np.log(1 - prediction), axis=1)
    # code-loader hands losses float16 tensors, as the platform does: hence the tolerance
    np.testing.assert_allclose(binder.bce_loss(gt, prediction), expected, rtol=2e-3)
    pos, neg = losses.class_balanced_weights(data.labels_array(data.split(data.load_index(sample_dir), "train"),
                                                               ("Male", "Young")))
    weights = gt * np.array(pos) + (1 - gt) * np.array(neg)
    per_label = -(gt * np.log(prediction) + (1 - gt) * np.log(1 - prediction))
    np.testing.assert_allclose(binder.weighted_bce_loss(gt, prediction), np.mean(per_label * weights, axis=1),
                               rtol=2e-3)


def test_metric_gives_per_label_confusion_per_sample(binder):
    result = binder.label_confusion(np.array([[1, 0], [0, 0]], np.float32), np.array([[0.9, 0.8], [0.2, 0.1]],
                                                                                       np.float32))
    assert len(result) == 10
    np.testing.assert_array_equal(result["Male_tp"], [1, 0])
    np.testing.assert_array_equal(result["Male_tn"], [0, 1])
    np.testing.assert_array_equal(result["Young_fp"], [1, 0])
    np.testing.assert_array_equal(result["Young_accuracy"], [0, 1])
    assert result["Male_fn"].sum() == 0


def test_visualizers(binder, responses):
    image = binder.input_image(responses["validation"].sample_ids[0], responses["validation"])
    shown = binder.image_visualizer(image[None])
    assert shown.data.dtype == np.uint8 and shown.data.shape == (64, 64, 3)
    bar = binder.labels_visualizer(np.array([[0.7, 0.2]], np.float32), np.array([[1, 0]], np.float32))
    assert bar.labels == ["Male", "Young"] and bar.body.tolist() == pytest.approx([0.7, 0.2])
    cam = binder.gradcam_visualizer(image[None])
    assert cam.heatmaps.shape == (2, 64, 64) and cam.labels == ["Male", "Young"]
    assert 0 <= cam.heatmaps.min() and cam.heatmaps.max() <= 1


# --------------------------------------------------------------------------- project files


def project_imports(path: Path) -> set[Path]:
    """Project files a module imports, anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # a package's __init__.py comes with every module in it
                stem = ROOT.joinpath(*parts[:i])
                for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
                    if candidate.is_file():
                        found.add(candidate)
    return found


def test_leap_yaml_includes_everything_the_entry_file_imports():
    config = yaml.safe_load((ROOT / "leap.yaml").read_text())
    assert config["entryFile"] == "leap_binder.py" and config["pythonVersion"] == "py311"
    included = set(config["include"])
    for name in included:
        assert (ROOT / name).is_file(), f"leap.yaml includes {name}, which does not exist"
        assert not name.startswith(("data/", "models/")), f"leap.yaml must not upload data or models: {name}"
    needed, todo = set(), [ROOT / config["entryFile"]]
    while todo:
        for path in project_imports(todo.pop()) - needed:
            needed.add(path)
            todo.append(path)
    needed = {str(path.relative_to(ROOT)) for path in needed}
    assert {"celeba/data.py", "celeba/saliency.py", "celeba/losses.py"} <= needed  # the walk finds imports
    missing = sorted(needed - included)
    assert not missing, f"add to leap.yaml include: {missing}"
    assert {config["entryFile"], "requirements.txt"} <= included


def test_requirements_txt_agrees_with_pyproject():
    declared = {canonicalize_name(r.name): r for r in map(Requirement, tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["dependencies"])}
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    listed = {canonicalize_name(r.name): r for r in map(Requirement, filter(None, lines))}
    assert set(listed) == set(declared), (f"requirements.txt lacks {sorted(set(declared) - set(listed))}, "
                                          f"has extra {sorted(set(listed) - set(declared))}")
    for name, requirement in listed.items():
        pinned = [s.version for s in requirement.specifier if s.operator == "=="]
        compatible = requirement.specifier == declared[name].specifier or (
            pinned and declared[name].specifier.contains(pinned[0], prereleases=True))
        assert compatible, f"{name}: requirements.txt {requirement.specifier} vs pyproject {declared[name].specifier}"
