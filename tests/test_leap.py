"""The Tensorleap integration: the pushed bundle run the way the platform runs it, `leap_test.py` out of the
box, the binder's encoders, metrics and settings, and the project files (leap.yaml, requirements.txt)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.metadata
import json
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

from celeba import data, image_stats, metrics

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # leap_binder.py sits at the repository root, outside the package
    sys.path.insert(0, str(ROOT))
CONFIG = yaml.safe_load((ROOT / "project_config.yaml").read_text())
ONNX_MODEL = ROOT / CONFIG["model"]
LEAP_YAML = yaml.safe_load((ROOT / "leap.yaml").read_text())


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any CELEBA_* or platform variable (a Tensorleap job has none of ours)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CELEBA_") and k not in ("IS_CLOUD", "GENERIC_HOST_PATH", "PYTHONPATH")
    }
    return {**env, "TL_DISABLE_ANALYTICS": "true", "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def status_table(stdout: str) -> dict[str, str]:
    return {
        line.split("|")[0].strip(): line.split("|")[1].strip() for line in stdout.splitlines() if line.count("|") == 1
    }


# --------------------------------------------------------------------------- the bundle, as the platform runs it

# Runs leap_test.py from the bundle folder (cwd) with the project NOT importable: the venv's editable install
# puts the repository on sys.path through a .pth file, which the platform does not have, so it is dropped.
DRIVER = r"""
import importlib.util, json, runpy, sys
from pathlib import Path

bundle, report = Path.cwd().resolve(), Path(sys.argv[1])
sys.path[:] = [p for p in sys.path if not (Path(p or ".").resolve() / "celeba" / "__init__.py").is_file()]
importable_before = importlib.util.find_spec("celeba") is not None
leap_test = runpy.run_path(str(bundle / "leap_test.py"), run_name="leap_test")
code = leap_test["main"](sys.argv[2:])
report.write_text(json.dumps({
    "exit": code, "importable_before": importable_before, "bundle": str(bundle),
    "celeba_file": sys.modules["celeba"].__file__ if "celeba" in sys.modules else None,
    "modules": sorted({name.split(".")[0] for name in sys.modules}),
    "handlers": sorted(leap_test["custom_handlers"]()),
}))
sys.exit(code)
"""


@pytest.fixture(scope="module")
def bundle_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, Path]:
    """`leap push`'s upload (only leap.yaml's include files) in an empty folder, a copy of the embedded sample
    mounted as `<volume>/celeba` through GENERIC_HOST_PATH, no CELEBA_* variable, no models/ folder."""
    tmp = tmp_path_factory.mktemp("leap-push")
    bundle = tmp / "bundle"
    for name in LEAP_YAML["include"] + ["leap.yaml"]:
        (bundle / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, bundle / name)
    shutil.copytree(data.SAMPLE_DIR, tmp / "volume" / CONFIG["data_root"])
    (tmp / "driver.py").write_text(DRIVER)
    env = clean_env(GENERIC_HOST_PATH=f"{tmp / 'no-volume-here'}:{tmp / 'volume'}")
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            str(tmp / "driver.py"),
            str(tmp / "report.json"),
            "--samples",
            "1",
            "--model",
            str(ONNX_MODEL),
        ],
        cwd=bundle,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads((tmp / "report.json").read_text()) if (tmp / "report.json").is_file() else {}
    return result, report, tmp


@pytest.mark.slow
def test_pushed_bundle_passes_every_check_on_a_mounted_volume(bundle_run):
    result, report, tmp = bundle_run
    assert result.returncode == 0 and report["exit"] == 0, result.stdout + result.stderr
    assert not (Path(report["bundle"]) / "models").exists() and not (Path(report["bundle"]) / "data").exists()
    assert report["importable_before"] is False  # the project was not installed...
    assert Path(report["celeba_file"]).is_relative_to(report["bundle"])  # ...so the bundle's copy ran
    assert f"data:     {tmp / 'volume' / 'celeba'} (data_root of project_config.yaml" in result.stdout
    table = status_table(result.stdout)
    failed = [name for name, status in table.items() if status != "pass" and name != "check"]
    assert not failed, result.stdout
    for check in (
        "integration_test",
        "preprocess",
        "image",
        "labels",
        "attribute_Male",
        "sample_cohort",
        "sample_identity",
        "image_mean_luminance",
        "image_file_kb",
    ):
        assert table.get(check) == "pass", check
    ran = [name for name in table if name.startswith("integration_test[")]
    assert {name.split("[")[1].split(":")[0] for name in ran} == {"training", "validation", "test"}
    # every registered loss, metric and visualizer ran on a sample through the ONNX model
    assert report["handlers"] == sorted(
        ["loss bce", "loss weighted_bce", "metric label", "visualizer image", "visualizer labels_bar"]
    )
    assert all(table.get(handler) == "pass" for handler in report["handlers"])
    assert "Successful!" not in result.stdout


def test_binder_fails_naming_every_place_it_looked(tmp_path):
    """The same resolution without a volume: the error lists each GENERIC_HOST_PATH entry tried."""
    binder = importlib.import_module("leap_binder")
    env = {"GENERIC_HOST_PATH": f"{tmp_path / 'a'}:{tmp_path / 'b'}"}
    with pytest.raises(data.CelebADataError) as error:
        binder.data_dir(environ=env)
    assert f"tried {tmp_path / 'a' / 'celeba'}, {tmp_path / 'b' / 'celeba'}" in str(error.value)
    assert "data_root in project_config.yaml" in str(error.value)


def test_data_root_resolution_follows_the_platform_rules(tmp_path):
    binder = importlib.import_module("leap_binder")
    assert binder.data_dir_candidates("/data/celeba", {"IS_CLOUD": "true"}) == [Path("/data/celeba")]
    assert binder.data_dir_candidates("celeba", {"IS_CLOUD": "true", "GENERIC_HOST_PATH": "/x"}) == [
        Path("/nfs/celeba")
    ]
    assert binder.data_dir_candidates("celeba", {"IS_CLOUD": "false", "GENERIC_HOST_PATH": "/x::/y"}) == [
        Path("/x/celeba"),
        Path("/y/celeba"),
    ]
    assert binder.data_dir_candidates("celeba", {}) == [Path.home() / "tensorleap" / "data" / "celeba"]
    (tmp_path / "y" / "celeba").mkdir(parents=True)
    env = {"GENERIC_HOST_PATH": f"{tmp_path / 'x'}:{tmp_path / 'y'}"}
    assert binder.data_dir(environ=env) == tmp_path / "y" / "celeba"
    assert binder.data_dir(environ={**env, "CELEBA_DATA_DIR": "/local"}) == Path("/local")  # local override


@pytest.mark.slow
def test_requirements_txt_lists_only_what_the_bundle_imports(bundle_run):
    """requirements.txt (what the platform installs) names exactly the declared dependencies the pushed code
    imports: every one it imports directly (static), and none that the bundle run did not import (dynamic)."""
    _, report, _ = bundle_run
    declared = {
        canonicalize_name(r.name): r
        for r in map(Requirement, tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    }
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    listed = {canonicalize_name(r.name): r for r in map(Requirement, filter(None, lines))}
    distributions = {
        module: {canonicalize_name(d) for d in dists}
        for module, dists in importlib.metadata.packages_distributions().items()
    }
    imported = set().union(*(distributions.get(module, set()) for module in report["modules"]))
    assert not set(listed) - imported, f"requirements.txt lists {sorted(set(listed) - imported)}, never imported"
    direct = set().union(*(distributions.get(module, set()) for module in third_party_imports()))
    assert direct & set(declared) <= set(listed), f"add to requirements.txt: {sorted(direct - set(listed))}"
    assert {"fastapi", "uvicorn", "tf2onnx", "tensorboard"}.isdisjoint(listed)
    for name, requirement in listed.items():
        assert name in declared, f"{name} is in requirements.txt but not in pyproject.toml"
        assert requirement.specifier == declared[name].specifier, name


# --------------------------------------------------------------------------- leap_test.py on a fresh clone


@pytest.mark.slow
def test_leap_test_passes_out_of_the_box_with_the_committed_model():
    result = subprocess.run(
        [sys.executable, "leap_test.py", "--samples", "1"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"model:    {ONNX_MODEL}" in result.stdout and "(the embedded sample;" in result.stdout
    assert "OK: " in result.stdout and "FAIL" not in result.stdout
    assert "loss weighted_bce: [" in result.stdout and "metric label: Male_accuracy=" in result.stdout
    assert result.stdout.count("Successful!") == 0


@pytest.mark.slow
def test_leap_test_exits_1_and_names_every_place_tried_without_a_volume(tmp_path):
    env = clean_env(GENERIC_HOST_PATH=f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    result = subprocess.run(
        [sys.executable, "leap_test.py", "--volume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"tried {tmp_path / 'a' / 'celeba'}, {tmp_path / 'b' / 'celeba'}" in result.stdout
    assert "FAILED: 0/" in result.stdout


# --------------------------------------------------------------------------- the binder, in-process


@pytest.fixture
def binder(monkeypatch, sample_dir):
    monkeypatch.setenv("CELEBA_DATA_DIR", str(sample_dir))
    monkeypatch.delenv("CELEBA_LEAP_MODEL", raising=False)
    module = importlib.import_module("leap_binder")
    module.use_model(None)
    assert module.LABELS == tuple(CONFIG["labels"]) and module.CONFIG.image_size == CONFIG["image_size"]
    return module


@pytest.fixture
def responses(binder):
    return {r.state.value: r for r in binder.preprocess()}


def test_importing_the_binder_does_not_import_tensorflow():
    code = "import sys, leap_binder; print(sorted({'tensorflow', 'keras', 'onnxruntime'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=clean_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_preprocess_gives_every_partition_with_file_names_as_ids(binder, responses, sample_dir):
    index = data.load_index(sample_dir)
    assert set(responses) == {"training", "validation", "test"}
    for state, partition in (("training", "train"), ("validation", "validation"), ("test", "test")):
        assert responses[state].sample_ids == data.split(index, partition)["image_id"].tolist()
    last = responses["training"].sample_ids[-1]
    assert responses["training"].data.row(last)["image_id"].iat[0] == last


def test_sample_limit_per_split_takes_the_first_samples_of_every_partition(binder, monkeypatch, sample_dir):
    monkeypatch.setattr(binder, "CONFIG", dataclasses.replace(binder.CONFIG, sample_limit_per_split=3))
    limited = {r.state.value: r.sample_ids for r in binder.preprocess()}
    index = data.load_index(sample_dir)
    assert limited["test"] == data.split(index, "test")["image_id"].tolist()[:3]
    assert [len(ids) for ids in limited.values()] == [3, 3, 3]


def test_encoders_use_the_training_preprocessing_and_labels(binder, responses):
    train = responses["training"]
    size = CONFIG["image_size"]
    for sample_id in (train.sample_ids[0], train.sample_ids[-1]):
        row = train.data.row(sample_id)
        image = binder.input_image(sample_id, train)
        assert image.dtype == np.float32 and image.shape == (size, size, 3)
        np.testing.assert_array_equal(image, data.load_image(row["path"].iat[0], size).numpy())
        gt = binder.gt_labels(sample_id, train)
        assert gt.dtype == np.float32
        np.testing.assert_array_equal(gt, row[["Male", "Young"]].to_numpy(np.float32)[0])


def test_metadata_covers_attributes_cohort_identity_and_image_statistics(binder, responses):
    test = responses["test"]
    sample_id = test.sample_ids[3]
    row = test.data.row(sample_id)
    attributes = binder.metadata_attributes(sample_id, test)
    assert attributes == {name: int(row[name].iat[0]) for name in data.ATTRIBUTES}
    sample = binder.metadata_sample(sample_id, test)
    # identity is a string (a category on the platform, not a float); partition is the dataset state already
    assert sample == {"cohort": metrics.cohort_names(row).iat[0], "identity": str(int(row["identity"].iat[0]))}
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


def test_pose_proxies_and_raw_landmarks_appear_where_the_landmarks_file_exists(binder, landmarked_dir, monkeypatch):
    folder, ids = landmarked_dir
    monkeypatch.setenv("CELEBA_DATA_DIR", str(folder))
    by_id = {sid: r for r in binder.preprocess() for sid in r.sample_ids}
    frontal = binder.metadata_sample(ids[2], by_id[ids[2]])
    assert frontal["pose_yaw"] == pytest.approx(0.0) and frontal["pose_roll"] == pytest.approx(0.0)
    assert frontal["pose_pitch"] == pytest.approx(0.5) and frontal["eye_distance"] == pytest.approx(40.0)
    assert [frontal[name] for name in data.LANDMARKS] == list(FRONTAL)
    turned = binder.metadata_sample(ids[1], by_id[ids[1]])
    assert turned["pose_yaw"] == pytest.approx(0.25) and turned["nose_x"] == 100.0
    unknown = binder.metadata_sample(ids[0], by_id[ids[0]])
    assert unknown["pose_yaw"] is None and unknown["nose_x"] is None and unknown["cohort"]  # the rest still there


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


def test_losses_are_the_training_losses_with_the_configured_class_weights(binder):
    gt = np.array([[1, 0], [0, 1]], np.float32)
    prediction = np.array([[0.9, 0.2], [0.3, 0.6]], np.float32)
    per_label = -(gt * np.log(prediction) + (1 - gt) * np.log(1 - prediction))
    # code-loader hands losses float16 tensors, as the platform does: hence the tolerance
    np.testing.assert_allclose(binder.bce_loss(gt, prediction), per_label.mean(axis=1), rtol=2e-3)
    weights = CONFIG["class_weights"]  # not recomputed from the mounted data
    pos = np.array([weights[label]["positive"] for label in CONFIG["labels"]])
    neg = np.array([weights[label]["negative"] for label in CONFIG["labels"]])
    np.testing.assert_allclose(
        binder.weighted_bce_loss(gt, prediction), np.mean(per_label * (gt * pos + (1 - gt) * neg), axis=1), rtol=2e-3
    )


def test_metric_gives_confusion_conditional_rates_and_margins_per_sample(binder):
    gt = np.array([[1, 0], [0, 0], [1, 1]], np.float32)
    prediction = np.array([[0.9, 0.8], [0.2, 0.1], [0.25, 0.5]], np.float32)
    result = binder.label_metric(gt, prediction)
    assert len(result) == 2 * len(binder.METRIC_DIRECTIONS)
    np.testing.assert_array_equal(result["Male_tp"], [1, 0, 0])
    np.testing.assert_array_equal(result["Young_fp"], [1, 0, 0])
    np.testing.assert_array_equal(result["Young_accuracy"], [0, 1, 1])
    # conditional rates: NaN where the condition does not hold, so a cohort's mean is the rate
    np.testing.assert_array_equal(result["Male_recall"], [1, np.nan, 0])
    np.testing.assert_array_equal(result["Male_miss_rate"], [0, np.nan, 1])
    np.testing.assert_array_equal(result["Male_specificity"], [np.nan, 1, np.nan])
    np.testing.assert_array_equal(result["Young_fall_out"], [1, 0, np.nan])
    assert np.nanmean(result["Male_recall"]) == 0.5
    # margin: + right, - wrong, scaled by the distance from the threshold; confidence is its size
    np.testing.assert_allclose(result["Male_margin"], [0.8, 0.6, -0.5], atol=2e-3)
    np.testing.assert_allclose(result["Young_margin"], [-0.6, 0.8, 0.0], atol=2e-3)
    np.testing.assert_allclose(result["Young_confidence"], [0.6, 0.8, 0.0], atol=2e-3)


def test_visualizers(binder, responses):
    image = binder.input_image(responses["validation"].sample_ids[0], responses["validation"])
    shown = binder.image_visualizer(image[None])
    assert shown.data.dtype == np.uint8 and shown.data.shape == image.shape
    bar = binder.labels_visualizer(np.array([[0.7, 0.2]], np.float32), np.array([[1, 0]], np.float32))
    assert bar.labels == ["Male", "Young"] and bar.body.tolist() == pytest.approx([0.7, 0.2])
    assert not hasattr(binder, "gradcam_visualizer")  # the platform computes its own input heatmaps


def test_committed_onnx_model_matches_the_config():
    """The pushed model: the ONNX export of the default model, with the config's labels, size, class weights."""
    import onnxruntime as ort

    binder = importlib.import_module("leap_binder")
    session = ort.InferenceSession(str(ONNX_MODEL), providers=["CPUExecutionProvider"])
    binder.check_model(session, binder.CONFIG, ONNX_MODEL)  # raises on any mismatch
    assert json.loads(session.get_modelmeta().custom_metadata_map["labels"]) == CONFIG["labels"]
    # the class weights are the balanced weights of the source model's training set (its run card records the
    # positive rates, rounded: hence the tolerance)
    card = json.loads(ONNX_MODEL.with_suffix(".json").read_text())
    source = json.loads((ROOT / card["source_model"]).with_suffix(".json").read_text())
    assert source["config"]["labels"] == CONFIG["labels"] and source["config"]["image_size"] == CONFIG["image_size"]
    for label, rate in source["data"]["train_positive_rate"].items():
        assert CONFIG["class_weights"][label] == pytest.approx(
            {"positive": 1 / (2 * rate), "negative": 1 / (2 * (1 - rate))}, rel=1e-3
        )


def test_check_model_names_every_mismatch(tmp_path):
    import onnxruntime as ort

    binder = importlib.import_module("leap_binder")
    session = ort.InferenceSession(str(ONNX_MODEL), providers=["CPUExecutionProvider"])
    wrong = dataclasses.replace(binder.CONFIG, image_size=128, labels=("Male", "Young", "Smiling"), class_weights=None)
    with pytest.raises(ValueError) as error:
        binder.check_model(session, wrong, ONNX_MODEL)
    assert "image_size 128" in str(error.value) and "has 2 outputs, the config names 3 labels" in str(error.value)
    assert "trained on labels ['Male', 'Young']" in str(error.value)


def test_project_config_rejects_bad_settings(tmp_path):
    binder = importlib.import_module("leap_binder")
    path = tmp_path / "project_config.yaml"
    for text, message in (
        ("labels: [Male, Smiles]", "unknown attribute"),
        ("image_size: big", "image_size"),
        ("sample_limit_per_split: 0", "sample_limit_per_split"),
        ("colour: red", "unknown setting"),
        ("class_weights: {Male: {positive: 1, negative: 1}}", "class_weights"),
    ):
        path.write_text(text)
        with pytest.raises(data.CelebADataError, match=message):
            binder.ProjectConfig.read(path)


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


def third_party_imports() -> set[str]:
    """Top-level modules the binder imports anywhere, and the project modules it uses import at module level."""
    stdlib = set(sys.stdlib_module_names)
    found = set()
    for path in {ROOT / LEAP_YAML["entryFile"]} | project_imports(ROOT / LEAP_YAML["entryFile"]):
        tree = ast.parse(path.read_text())
        nodes = ast.walk(tree) if path.name == LEAP_YAML["entryFile"] else tree.body
        for node in nodes:
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return {name for name in found - stdlib if not (ROOT / name).exists() and not (ROOT / f"{name}.py").exists()}


def test_leap_yaml_includes_everything_the_entry_file_imports():
    assert LEAP_YAML["entryFile"] == "leap_binder.py" and LEAP_YAML["pythonVersion"] == "py311"
    included = set(LEAP_YAML["include"])
    for name in included:
        assert (ROOT / name).is_file(), f"leap.yaml includes {name}, which does not exist"
        assert not name.startswith(("data/", "models/")), f"leap.yaml must not upload data or models: {name}"
    needed, todo = set(), [ROOT / LEAP_YAML["entryFile"]]
    while todo:
        for path in project_imports(todo.pop()) - needed:
            needed.add(path)
            todo.append(path)
    needed = {str(path.relative_to(ROOT)) for path in needed}
    assert {"celeba/data.py", "celeba/losses.py"} <= needed  # the walk finds imports, function-level ones too
    assert not needed - included, f"add to leap.yaml include: {sorted(needed - included)}"
    assert {LEAP_YAML["entryFile"], "requirements.txt", "project_config.yaml", "leap_test.py"} <= included
    assert "#" not in (ROOT / "leap.yaml").read_text()  # the CLI rewrites leap.yaml: comments there get lost
