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
import pandas as pd
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

from celeba import data, image_stats, metrics, sources

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # leap_binder.py sits at the repository root, outside the package
    sys.path.insert(0, str(ROOT))
CONFIG = yaml.safe_load((ROOT / "project_config.yaml").read_text())
ONNX_MODEL = ROOT / CONFIG["model"]
PHOTOS_DIR = ROOT / "data" / "photos-sample"  # the photo-folder fixture: images/, labels.csv, split.csv
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
# DRIVER_CLOUD_VOLUMES (read here only, never by the bundle) stands in for the platform's /fsx and /nfs: it replaces
# the binder's CLOUD_VOLUMES right after code-loader has executed the entry file, before preprocess runs.
DRIVER = r"""
import importlib.util, json, os, runpy, sys
from pathlib import Path

bundle, report = Path.cwd().resolve(), Path(sys.argv[1])
sys.path[:] = [p for p in sys.path if not (Path(p or ".").resolve() / "celeba" / "__init__.py").is_file()]
importable_before = importlib.util.find_spec("celeba") is not None
if os.environ.get("DRIVER_CLOUD_VOLUMES"):
    from code_loader import leaploader

    evaluate_module = leaploader.LeapLoader.evaluate_module

    def with_test_volumes(self):
        evaluate_module(self)
        binder = leaploader.global_leap_binder.setup_container.preprocess.function.__globals__
        binder["CLOUD_VOLUMES"] = tuple(map(Path, os.environ["DRIVER_CLOUD_VOLUMES"].split(":")))

    leaploader.LeapLoader.evaluate_module = with_test_volumes
leap_test = runpy.run_path(str(bundle / "leap_test.py"), run_name="leap_test")
code = leap_test["main"](sys.argv[2:])
from code_loader.leaploader import global_leap_binder

test_func = global_leap_binder.integration_test_func
binder = test_func.__globals__ if test_func is not None else {}
report.write_text(json.dumps({
    "exit": code, "importable_before": importable_before, "bundle": str(bundle),
    "celeba_file": sys.modules["celeba"].__file__ if "celeba" in sys.modules else None,
    "modules": sorted({name.split(".")[0] for name in sys.modules}),
    "handlers": sorted(leap_test["custom_handlers"]()),
    "sample_ids": {r.state.value: r.sample_ids for r in binder["preprocess"]()} if binder else {},
    "excluded": binder["excluded_images"]() if binder else {},
}))
sys.exit(code)
"""

VOLUME_KINDS = ("fsx", "nfs", "generic_host_path", "home")


def truncate(path: Path) -> None:
    """Cut an image file in half: a truncated JPEG, as a partial upload leaves it."""
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def make_volume(volume: Path) -> dict[str, Path]:
    """`<volume>/celeba` (the embedded sample) and `<volume>/utkface` (the photo fixture), one truncated JPEG in
    each; returns the truncated files."""
    shutil.copytree(data.SAMPLE_DIR, volume / CONFIG["data_root"])
    photos = volume / CONFIG["photos"]["root"]
    shutil.copytree(PHOTOS_DIR, photos, ignore=shutil.ignore_patterns("README.md"))
    index = data.load_index(volume / CONFIG["data_root"])
    bad = {
        "celeba": Path(data.split(index, "validation")["path"].iat[1]),
        "photo": photos / CONFIG["photos"]["images"] / sorted(os.listdir(PHOTOS_DIR / "images"))[1],
    }
    for path in bad.values():
        truncate(path)
    return bad


def volume_env(kind: str, tmp: Path) -> tuple[dict[str, str], Path]:
    """The environment of a job on the platform `kind` and the volume root where its data must be."""
    home = tmp / "home"
    home.mkdir()
    if kind == "home":
        return clean_env(HOME=str(home)), home / "tensorleap" / "data"
    if kind == "generic_host_path":
        return clean_env(HOME=str(home), GENERIC_HOST_PATH=f"{tmp / 'no-volume-here'}:{tmp / 'volume'}"), tmp / "volume"
    fsx, nfs = tmp / "fsx", tmp / "nfs"
    if kind == "nfs":
        fsx.mkdir()  # mounted but without the data: the search goes on to /nfs
    return clean_env(HOME=str(home), IS_CLOUD="true", DRIVER_CLOUD_VOLUMES=f"{fsx}:{nfs}"), tmp / kind


@pytest.fixture(scope="module", params=VOLUME_KINDS)
def bundle_run(request, tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, Path, dict[str, Path]]:
    """`leap push`'s upload (only leap.yaml's include files) in an empty folder, the data on a volume found the
    way the platform `request.param` finds it (no face-crop cache: the job makes it), no CELEBA_* variable, no
    models/ folder; returns (the run, the driver's report, the volume root, the truncated files)."""
    tmp = tmp_path_factory.mktemp(f"leap-push-{request.param}")
    bundle = tmp / "bundle"
    for name in LEAP_YAML["include"] + ["leap.yaml"]:
        (bundle / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, bundle / name)
    env, volume = volume_env(request.param, tmp)
    bad = make_volume(volume)
    (tmp / "driver.py").write_text(DRIVER)
    command = [sys.executable, "-I", str(tmp / "driver.py"), str(tmp / "report.json"), "--samples", "1"]
    result = subprocess.run(
        command + ["--model", str(ONNX_MODEL)], cwd=bundle, env=env, capture_output=True, text=True, timeout=600
    )
    report = json.loads((tmp / "report.json").read_text()) if (tmp / "report.json").is_file() else {}
    return result, report, volume, bad


SUBSETS = ("training", "validation", "test", "additional")
HANDLERS = ["loss bce", "loss weighted_bce", "metric label", "visualizer image", "visualizer labels_bar"]


@pytest.mark.slow
def test_pushed_bundle_passes_every_check_on_every_kind_of_volume(bundle_run):
    result, report, volume, _ = bundle_run
    assert result.returncode == 0 and report["exit"] == 0, result.stdout + result.stderr
    assert not (Path(report["bundle"]) / "models").exists() and not (Path(report["bundle"]) / "data").exists()
    assert report["importable_before"] is False  # the project was not installed...
    assert Path(report["celeba_file"]).is_relative_to(report["bundle"])  # ...so the bundle's copy ran
    assert f"data:     {volume / 'celeba'} (data_root of project_config.yaml" in result.stdout
    assert f"photos:   {volume / 'utkface'} (photos.root of project_config.yaml" in result.stdout
    table = status_table(result.stdout)
    failed = [name for name, status in table.items() if status != "pass" and name != "check"]
    assert not failed, result.stdout
    for check in ("integration_test", "preprocess", "image", "labels", "attribute_Male", "sample_cohort"):
        assert table.get(check) == "pass", check
    for check in ("sample_identity", "population_race", "population_age_band", "image_file_kb"):
        assert table.get(check) == "pass", check
    assert set(report["sample_ids"]) == set(SUBSETS)
    ran = [name for name in table if name.startswith("integration_test[")]
    assert {name.split("[")[1].split(":")[0] for name in ran} == set(SUBSETS)
    # every registered loss, metric and visualizer ran on the first sample of every subset through the ONNX model
    assert report["handlers"] == sorted(HANDLERS)
    for subset in SUBSETS:
        where = f"[{subset}:{report['sample_ids'][subset][0]}]"
        assert all(table.get(f"{handler} {where}") == "pass" for handler in HANDLERS), (subset, result.stdout)
    assert "Successful!" not in result.stdout
    # the job made the face crops on the volume, beside the photos
    assert (volume / "utkface" / CONFIG["photos"]["crops"] / sources.CROPS_FILE).is_file()


@pytest.mark.slow
def test_pushed_bundle_screens_out_a_truncated_jpeg_and_names_it(bundle_run):
    result, report, volume, bad = bundle_run
    assert result.returncode == 0, result.stdout + result.stderr
    celeba = bad["celeba"]
    assert celeba.name not in report["sample_ids"]["validation"]  # excluded from the sample ids...
    assert "truncated" in report["excluded"][str(celeba)]  # ...with the reason
    assert f"excluded: {celeba}: not a decodable image" in result.stdout  # named in the report...
    assert f"excluded from CelebA validation: {celeba}" in result.stderr  # ...and in the log
    photo = bad["photo"]
    assert photo.name not in report["sample_ids"]["additional"] and str(photo) in result.stderr


# --------------------------------------------------------------------------- where the data is


@pytest.fixture
def volumes(tmp_path, monkeypatch):
    """Stand-ins for /fsx and /nfs (not created) and an empty home; returns (fsx, nfs, home)."""
    binder = importlib.import_module("leap_binder")
    fsx, nfs, home = tmp_path / "fsx", tmp_path / "nfs", tmp_path / "home"
    monkeypatch.setattr(binder, "CLOUD_VOLUMES", (fsx, nfs))
    monkeypatch.setenv("HOME", str(home))
    return fsx, nfs, home


def test_data_root_on_the_cloud_is_fsx_then_nfs_where_mounted(volumes):
    binder = importlib.import_module("leap_binder")
    fsx, nfs, home = volumes
    cloud = {"IS_CLOUD": "true", "GENERIC_HOST_PATH": "/x"}
    fsx.mkdir()
    assert binder.data_dir_candidates("celeba", cloud) == [fsx / "celeba"]  # /nfs not mounted: not tried
    nfs.mkdir()
    assert binder.data_dir_candidates("celeba", cloud) == [fsx / "celeba", nfs / "celeba"]
    assert binder.data_dir_candidates("celeba", {"IS_CLOUD": "0"}) == [fsx / "celeba", nfs / "celeba"]  # non-empty
    (nfs / "celeba").mkdir()
    assert binder.data_dir(environ=cloud) == nfs / "celeba"  # /fsx is mounted but lacks the folder
    (fsx / "celeba").mkdir()
    assert binder.data_dir(environ=cloud) == fsx / "celeba"


def test_data_root_elsewhere_is_generic_host_path_then_home(volumes):
    binder = importlib.import_module("leap_binder")
    fsx, nfs, home = volumes
    nfs.mkdir()
    default = home / "tensorleap" / "data" / "celeba"
    assert binder.data_dir_candidates("celeba", {}) == [default]
    assert binder.data_dir_candidates("celeba", {"IS_CLOUD": ""}) == [default]  # set but empty: not the cloud
    assert binder.data_dir_candidates("celeba", {"GENERIC_HOST_PATH": "/x::/y"}) == [
        Path("/x/celeba"),
        Path("/y/celeba"),
        default,
    ]
    nfs.rmdir()  # IS_CLOUD without /fsx or /nfs: the on-premise rules, as the hub integrations do
    assert binder.data_dir_candidates("celeba", {"IS_CLOUD": "true", "GENERIC_HOST_PATH": "/x"}) == [
        Path("/x/celeba"),
        default,
    ]
    default.mkdir(parents=True)
    assert binder.data_dir(environ={"GENERIC_HOST_PATH": str(fsx)}) == default
    (fsx / "celeba").mkdir(parents=True)
    assert binder.data_dir(environ={"GENERIC_HOST_PATH": str(fsx)}) == fsx / "celeba"


def test_the_config_setting_overrides_every_volume_and_the_variable_overrides_it_locally(volumes):
    binder = importlib.import_module("leap_binder")
    fsx, _, _ = volumes
    (fsx / "celeba").mkdir(parents=True)
    cloud = {"IS_CLOUD": "true", "GENERIC_HOST_PATH": "/x"}
    assert binder.data_dir_candidates("/data/celeba", cloud) == [Path("/data/celeba")]
    config = dataclasses.replace(binder.CONFIG, data_root=str(fsx / "celeba"))
    assert binder.data_dir(config, environ=cloud) == fsx / "celeba"
    assert binder.data_dir(config, environ={**cloud, "CELEBA_DATA_DIR": "/local"}) == Path("/local")


def test_binder_fails_naming_every_place_it_looked(volumes, tmp_path):
    """Nothing found: one error that lists every path tried, in order, and the setting."""
    binder = importlib.import_module("leap_binder")
    fsx, nfs, home = volumes
    env = {"GENERIC_HOST_PATH": f"{tmp_path / 'a'}:{tmp_path / 'b'}"}
    with pytest.raises(data.CelebADataError) as error:
        binder.data_dir(environ=env)
    tried = [tmp_path / "a" / "celeba", tmp_path / "b" / "celeba", home / "tensorleap" / "data" / "celeba"]
    assert f"tried {', '.join(map(str, tried))}." in str(error.value)
    assert "data_root in project_config.yaml" in str(error.value)
    with pytest.raises(data.CelebADataError, match=r"none of .*fsx.*nfs exists"):
        binder.data_dir(environ={"IS_CLOUD": "true"})
    fsx.mkdir()
    nfs.mkdir()
    with pytest.raises(data.CelebADataError) as error:
        binder.photos_dir(environ={"IS_CLOUD": "true"})
    assert f"tried {fsx / 'utkface'}, {nfs / 'utkface'}." in str(error.value) and "photos.root" in str(error.value)


@pytest.mark.slow
def test_requirements_txt_lists_only_what_the_bundle_imports(bundle_run):
    """requirements.txt (what the platform installs) names exactly the declared dependencies the pushed code
    imports: every one it imports directly (static), and none that the bundle run did not import (dynamic)."""
    _, report, _, _ = bundle_run
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
def test_leap_test_passes_out_of_the_box_with_the_committed_model(tmp_path):
    """No flag, no variable: both embedded samples (the face crops land in ~/.cache, here a fresh home); and the
    latent-space figure of the photo subset."""
    result = subprocess.run(
        [sys.executable, "leap_test.py", "--samples", "1", "--latent-space", str(tmp_path / "latent.png")],
        cwd=ROOT,
        env=clean_env(HOME=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"model:    {ONNX_MODEL}" in result.stdout
    assert f"data:     {data.SAMPLE_DIR} (the embedded sample;" in result.stdout
    assert f"photos:   {PHOTOS_DIR} (the embedded sample;" in result.stdout
    assert "OK: " in result.stdout and "FAIL" not in result.stdout and "excluded:" not in result.stdout
    assert "loss weighted_bce: [" in result.stdout and "metric label: Male_accuracy=" in result.stdout
    assert "\nadditional sample " in result.stdout and "population_race=" in result.stdout
    assert result.stdout.count("Successful!") == 0
    assert (tmp_path / sources.default_crops_dir(PHOTOS_DIR / "images").relative_to(Path.home())).is_dir()
    assert Image.open(tmp_path / "latent.png").size[0] > 800
    assert "Male accuracy by race x gender:" in result.stdout and "Asian  female     2" in result.stdout


@pytest.mark.slow
def test_leap_test_exits_1_and_names_every_place_tried_without_a_volume(tmp_path):
    env = clean_env(GENERIC_HOST_PATH=f"{tmp_path / 'a'}:{tmp_path / 'b'}", HOME=str(tmp_path / "home"))
    result = subprocess.run(
        [sys.executable, "leap_test.py", "--volume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 1, result.stdout + result.stderr
    home = tmp_path / "home" / "tensorleap" / "data" / "celeba"
    assert f"tried {tmp_path / 'a' / 'celeba'}, {tmp_path / 'b' / 'celeba'}, {home}." in result.stdout
    assert "FAILED: 0/" in result.stdout


# --------------------------------------------------------------------------- the binder, in-process


@pytest.fixture(scope="session")
def crops_home(tmp_path_factory) -> Path:
    """One home for the in-process binder's photo crops (~/.cache), shared by the session: crops are made once."""
    return tmp_path_factory.mktemp("leap-home")


@pytest.fixture
def binder(monkeypatch, sample_dir, crops_home):
    monkeypatch.setenv("CELEBA_DATA_DIR", str(sample_dir))
    monkeypatch.setenv("CELEBA_PHOTOS_DIR", str(PHOTOS_DIR))
    monkeypatch.setenv("HOME", str(crops_home))
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
    assert set(responses) == {"training", "validation", "test", "additional"}
    for state, partition in (("training", "train"), ("validation", "validation"), ("test", "test")):
        assert responses[state].sample_ids == data.split(index, partition)["image_id"].tolist()
    last = responses["training"].sample_ids[-1]
    assert responses["training"].data.row(last)["image_id"].iat[0] == last


def test_sample_limit_per_split_takes_the_first_samples_of_every_partition(binder, monkeypatch, sample_dir):
    monkeypatch.setattr(binder, "CONFIG", dataclasses.replace(binder.CONFIG, sample_limit_per_split=3))
    limited = {r.state.value: r.sample_ids for r in binder.preprocess()}
    index = data.load_index(sample_dir)
    assert limited["test"] == data.split(index, "test")["image_id"].tolist()[:3]
    assert [len(ids) for ids in limited.values()] == [3, 3, 3, 3]  # the photo subset too


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
    assert attributes == {name: bool(row[name].iat[0]) for name in data.ATTRIBUTES}
    sample = binder.metadata_sample(sample_id, test)
    # identity is an int; partition is the dataset state already; no landmarks file: pose and landmarks unknown
    assert {k: v for k, v in sample.items() if v is not None} == {
        "cohort": metrics.cohort_names(row).iat[0],
        "dataset": "celeba",
        "identity": int(row["identity"].iat[0]),
    }
    assert binder.metadata_population(sample_id, test) == dict.fromkeys(binder.POPULATION_TYPES)
    assert binder.metadata_image(sample_id, test) == pytest.approx(image_stats.file_statistics(row["path"].iat[0]))


PYTHON_TYPES = {"boolean": bool, "int": int, "float": float, "string": str}


def test_every_metadata_key_has_one_declared_type_on_every_subset(binder, responses):
    """Every sample of every subset gives every declared key, each value None or of the key's declared type."""
    handlers = {
        "attribute": (binder.metadata_attributes, binder.ATTRIBUTE_TYPES),
        "sample": (binder.metadata_sample, binder.SAMPLE_TYPES),
        "population": (binder.metadata_population, binder.POPULATION_TYPES),
        "image": (binder.metadata_image, binder.IMAGE_TYPES),
    }
    seen: dict[str, set[type]] = {}
    for response in responses.values():
        for sample_id in response.sample_ids[:: max(1, len(response.sample_ids) // 8)]:
            for name, (function, types) in handlers.items():
                values = function(sample_id, response)
                assert set(values) == set(types), name
                for key, value in values.items():
                    if value is not None:
                        assert type(value) is PYTHON_TYPES[types[key].value], (name, key, value)
                        seen.setdefault(f"{name}_{key}", set()).add(type(value))
    assert seen["attribute_Male"] == {bool} and seen["sample_identity"] == {int} and seen["population_age"] == {int}
    assert seen["population_race"] == {str} and seen["population_age_band"] == {str}


def test_photo_subset_is_the_folder_with_population_metadata(binder, responses):
    photos = responses["additional"]
    table = pd.read_csv(PHOTOS_DIR / "labels.csv").set_index("file")
    assert sorted(photos.sample_ids) == sorted(table.index)  # every fixture photo has a face
    for sample_id in photos.sample_ids[:4]:
        truth = table.loc[sample_id]
        expected_gt = [float(truth["Male"]), float(truth["age"] < 30)]
        assert binder.gt_labels(sample_id, photos).tolist() == expected_gt  # Young derived: age < 30
        band = str(sources.age_band(pd.Series([truth["age"]])).iat[0])
        assert binder.metadata_population(sample_id, photos) == {
            "race": truth["race"],
            "age": int(truth["age"]),
            "age_band": band,
            "gender": truth["gender"],
        }
        attributes = binder.metadata_attributes(sample_id, photos)
        assert {k for k, v in attributes.items() if v is not None} == {"Male", "Young"}
        assert binder.metadata_sample(sample_id, photos)["dataset"] == PHOTOS_DIR.name
        image = binder.input_image(sample_id, photos)  # the aligned 178x218 crop, like predict's
        assert image.shape == (CONFIG["image_size"], CONFIG["image_size"], 3)
        path = photos.data.row(sample_id)["path"].iat[0]
        assert Path(path).parent == sources.default_crops_dir(PHOTOS_DIR / "images")  # cached in ~/.cache locally
        assert Image.open(path).size == (178, 218)


def test_photo_subset_takes_the_configured_split_and_columns(binder, monkeypatch, tmp_path):
    photos = dataclasses.replace(binder.CONFIG.photos, split_file="split.csv", splits=("evaluation",))
    monkeypatch.setattr(binder, "CONFIG", dataclasses.replace(binder.CONFIG, photos=photos))
    binder.photo_subset.cache_clear()
    try:
        rows = binder.photo_subset(PHOTOS_DIR, True, None)
        split = pd.read_csv(PHOTOS_DIR / "split.csv").set_index("file")["split"]
        assert set(rows["image_id"]) == set(split.index[split == "evaluation"])
        columns = {"race": "ethnicity", "age": "age", "gender": None}
        wrong = dataclasses.replace(photos, columns=columns)
        monkeypatch.setattr(binder, "CONFIG", dataclasses.replace(binder.CONFIG, photos=wrong))
        binder.photo_subset.cache_clear()
        with pytest.raises(data.CelebADataError, match=r"labels\.csv: no column \{'race': 'ethnicity'\}"):
            binder.photo_subset(PHOTOS_DIR, True, None)
    finally:
        binder.photo_subset.cache_clear()


def test_photos_with_an_unknown_label_are_left_out_and_a_folder_without_one_is_an_error(binder, tmp_path):
    root = tmp_path / "photos"
    shutil.copytree(PHOTOS_DIR / "images", root / "images")
    table = pd.read_csv(PHOTOS_DIR / "labels.csv")
    table.loc[0, "age"] = None  # Young := age<30 is unknown for this photo
    table.to_csv(root / "labels.csv", index=False)
    rows = binder.photo_subset(root, False, None)
    assert len(rows) == len(table) - 1 and table["file"].iat[0] not in set(rows["image_id"])
    assert (root / "crops" / sources.CROPS_FILE).is_file()  # a volume folder: the cache sits beside the photos
    table.drop(columns="Male").to_csv(root / "labels.csv", index=False)
    binder.photo_subset.cache_clear()
    with pytest.raises(data.CelebADataError, match=r"labels\.csv: no photo has every label"):
        binder.photo_subset(root, False, None)
    binder.photo_subset.cache_clear()


def test_without_photos_the_binder_gives_celeba_only(binder, monkeypatch):
    monkeypatch.setattr(binder, "CONFIG", dataclasses.replace(binder.CONFIG, photos=None))
    assert [r.state.value for r in binder.preprocess()] == ["training", "validation", "test"]


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


def test_metric_sets_direction_and_insights_for_every_key(binder):
    from code_loader.leaploader import global_leap_binder

    keys = set(binder.label_metric(np.array([[1, 0]], np.float32), np.array([[0.9, 0.2]], np.float32)))
    metrics_data = [m.metric_handler_data for m in global_leap_binder.setup_container.metrics]
    (handler,) = [m for m in metrics_data if m.name == "label"]
    assert set(handler.direction) == keys and set(handler.compute_insights) == keys
    assert handler.direction["Male_fn"].value == "Downward" and handler.direction["Young_margin"].value == "Upward"
    assert handler.compute_insights["Male_accuracy"] and not handler.compute_insights["Male_tp"]
    assert {k for k, on in handler.compute_insights.items() if on} == {
        f"{label}_{kind}" for label in CONFIG["labels"] for kind in binder.METRIC_INSIGHTS
    }


# --------------------------------------------------------------------------- bad image files


@pytest.fixture
def image_files(tmp_path, sample_dir) -> dict[str, Path]:
    """A complete JPEG, the same truncated, with bytes after its end marker, empty, a PNG, and a non-image."""
    jpeg = next((sample_dir / data.IMAGE_DIR).iterdir()).read_bytes()
    files = {
        "jpeg": jpeg,
        "truncated": jpeg[: len(jpeg) // 2],
        "trailing": jpeg + b"some trailer",
        "empty": b"",
        "text": b"not an image at all",
    }
    paths = {name: tmp_path / f"{name}.jpg" for name in files}
    for name, content in files.items():
        paths[name].write_bytes(content)
    paths["png"] = tmp_path / "image.png"
    Image.new("RGB", (8, 8)).save(paths["png"])
    return paths


def test_image_screening_finds_truncated_empty_and_non_image_files(binder, image_files):
    assert binder.image_problem(str(image_files["jpeg"])) is None
    assert binder.image_problem(str(image_files["trailing"])) is None  # no end marker at the end: decoded in full
    assert binder.image_problem(str(image_files["png"])) is None
    assert "truncated" in binder.image_problem(str(image_files["truncated"]))
    assert binder.image_problem(str(image_files["empty"])) == "empty file"
    assert "not a decodable image" in binder.image_problem(str(image_files["text"]))
    assert "unreadable" in binder.image_problem(str(image_files["jpeg"].with_name("missing.jpg")))


def test_screening_excludes_bad_files_and_logs_each_by_name(binder, image_files, caplog):
    rows = pd.DataFrame({"image_id": list(image_files), "path": [str(p) for p in image_files.values()]})
    with caplog.at_level("WARNING", logger="leap_binder"):
        kept = binder.screen(rows, "a test subset")
    assert kept["image_id"].tolist() == ["jpeg", "trailing", "png"]
    for name in ("truncated", "empty", "text"):
        assert f"excluded from a test subset: {image_files[name]}: " in caplog.text
        assert str(image_files[name]) in binder.excluded_images()
    assert "3 unreadable image file(s) excluded from a test subset" in caplog.text


def test_an_image_that_does_not_decode_is_an_encoder_error_naming_the_file(binder, image_files):
    """A file that passes screening but does not decode (corrupt inside) still names itself."""
    corrupt = image_files["jpeg"].with_name("corrupt.jpg")
    jpeg = image_files["jpeg"].read_bytes()
    corrupt.write_bytes(jpeg[:20] + bytes(len(jpeg) - 22) + b"\xff\xd9")
    preprocess = binder.response(
        pd.DataFrame({"image_id": ["corrupt.jpg"], "path": [str(corrupt)]}), binder.DataStateType.test
    )
    with pytest.raises(data.CelebADataError, match=rf"^{corrupt}: cannot decode the image"):
        binder.input_image("corrupt.jpg", preprocess)


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
    wrong = dataclasses.replace(binder.CONFIG, image_size=96, labels=("Male", "Young", "Smiling"), class_weights=None)
    with pytest.raises(ValueError) as error:
        binder.check_model(session, wrong, ONNX_MODEL)
    assert "image_size 96" in str(error.value) and "has 2 outputs, the config names 3 labels" in str(error.value)
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
        ("comparison_model: 3", "comparison_model"),
        ("photos: [utkface]", "photos: must be a mapping"),
        ("photos: {root: utkface, colour: red}", r"photos: unknown setting\(s\) \['colour'\]"),
        ("photos: {derive: Young}", "photos: derive must be a list"),
        ("photos: {splits: [test], split_file: split.csv}", "photos: splits must be"),
        ("photos: {splits: [evaluation]}", "photos: splits needs a split_file"),
        ("photos: {columns: {ethnicity: race}}", "photos: columns maps"),
        ("photos: {root: 3}", "photos: root must be"),
    ):
        path.write_text(text)
        with pytest.raises(data.CelebADataError, match=message) as error:
            binder.ProjectConfig.read(path)
        assert str(error.value).startswith(f"{path}: ")  # names the file
    path.write_text("photos: null")
    assert binder.ProjectConfig.read(path).photos is None
    assert binder.CONFIG.photos.derive == ("Young=age<30",) and binder.CONFIG.comparison_model is None


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
    assert {"celeba/data/pipeline.py", "celeba/losses.py"} <= needed  # the walk finds imports, function-level ones too
    assert not needed - included, f"add to leap.yaml include: {sorted(needed - included)}"
    assert {LEAP_YAML["entryFile"], "requirements.txt", "project_config.yaml", "leap_test.py"} <= included
    assert "#" not in (ROOT / "leap.yaml").read_text()  # the CLI rewrites leap.yaml: comments there get lost
