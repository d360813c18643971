"""Everything code-loader can check without the platform, on the model the platform will run.

1. `LeapLoader.check_dataset()`: every encoder and metadata field on every subset;
2. the integration test on the first `--samples` ids of every subset, with the ONNX model;
3. the first sample of every subset fetched the way the platform fetches it (`LeapLoader.get_sample`), run
   through the model, then every registered loss, metric and visualizer through LeapLoader's own `run_*` calls.

Prints what it checked (data folders, model, settings, image files excluded as unreadable), a status table and
the samples' results; exits 1 on any failure.

    python leap_test.py [--samples N] [--model PATH.onnx] [--data-dir DIR] [--photos-dir DIR] [--volume]
                        [--latent-space PNG [--latent-limit N]]

CelebA: `--data-dir`, else CELEBA_DATA_DIR, else (in a repository checkout, unless `--volume`) the embedded
sample `data/celeba-sample/`, else `data_root` of project_config.yaml on the data volume, as on the platform.
Photos (the `additional` subset, where project_config.yaml sets `photos`): `--photos-dir`, else CELEBA_PHOTOS_DIR,
else (in a checkout, unless `--volume`) the embedded `data/photos-sample/`, else `photos.root` on the data volume.
Model: `--model`, else CELEBA_LEAP_MODEL, else `model` of project_config.yaml.
`--latent-space PNG` (local only: onnx, matplotlib) also draws the photo subset's latent space from the model's
`embedding` layer, coloured by gender, race and right/wrong, and prints accuracy per race x gender.
"""

import argparse
import contextlib
import io
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")  # code-loader otherwise sends usage events (stalls offline)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # what LeapLoader does for the binder; the bundle's own celeba/ package, also under -I
__import__("celeba.runtime").runtime.quiet_tensorflow()  # TensorFlow's start-up lines filtered, whatever the level
ENTRY_FILE = "leap_binder.py"
SAMPLE_DIR = ROOT / "data" / "celeba-sample"  # absent in a pushed bundle: there the volume is used
PHOTOS_SAMPLE_DIR = ROOT / "data" / "photos-sample"  # the same, for the photo subset

Row = tuple[str, bool, str]


def _failure(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(exc)).strip()


def check_dataset() -> tuple[bool, list[Row], dict]:
    """Run code-loader's own dataset check; returns (valid, [(check, passed, detail)], the binder's globals)."""
    from code_loader import LeapLoader
    from code_loader.leaploader import global_leap_binder

    loader = LeapLoader(str(ROOT), ENTRY_FILE)
    result = loader.check_dataset()
    rows = [
        (payload.name, payload.is_passed, "; ".join(f"{k}: {v}" for k, v in payload.display.items()))
        for payload in result.payloads
    ]
    if result.general_error:
        rows.append(("general", False, result.general_error))
    test_func = global_leap_binder.integration_test_func
    # LeapLoader executes the entry file as an anonymous module; the registered test's globals are that
    # module, so what follows runs the very functions code-loader checked (importing the file again would
    # register every decorator twice).
    binder = dict(test_func.__globals__, loader=loader) if test_func is not None else {}
    return result.is_valid, rows, binder


def run_integration_tests(binder: dict, samples: int) -> list[Row]:
    """The decorated integration test on the first `samples` ids of every partition."""
    rows = []
    try:
        responses = binder["preprocess"]()
    except Exception as exc:  # already in check_dataset's table; say why nothing more ran
        return [("integration_test (not run: preprocess failed)", False, _failure(exc))]
    for preprocess in responses:
        for sample_id in preprocess.sample_ids[:samples]:
            name = f"integration_test[{preprocess.state.value}:{sample_id}]"
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # code-loader prints "Successful!" per call
                    binder["integration_test"](sample_id, preprocess)
                rows.append((name, True, ""))
            except Exception as exc:  # report every failure, not just the first
                rows.append((name, False, _failure(exc)))
    return rows


def custom_handlers() -> dict[str, Any]:
    """The binder's own losses, metrics and visualizers ('loss bce': handler data), without code-loader's
    built-in ones (registered in every integration; the platform runs only what the binder wires)."""
    from code_loader.default_losses import loss_name_to_function
    from code_loader.default_metrics import metrics_names_to_functions_and_direction
    from code_loader.leaploader import global_leap_binder
    from code_loader.visualizers.default_visualizers import DefaultVisualizer

    setup = global_leap_binder.setup_container
    built_in = {
        "loss": set(loss_name_to_function),
        "metric": set(metrics_names_to_functions_and_direction),
        "visualizer": {v.value for v in DefaultVisualizer},
    }
    handlers = (
        [("loss", h.custom_loss_handler_data) for h in setup.custom_loss_handlers]
        + [("metric", h.metric_handler_data) for h in setup.metrics]
        + [("visualizer", h.visualizer_handler_data) for h in setup.visualizers]
    )
    return {f"{kind} {data.name}": data for kind, data in handlers if data.name not in built_in[kind]}


def run_handlers(binder: dict) -> tuple[list[Row], list[dict[str, Any]]]:
    """The first sample of every subset as the platform handles it: fetched by LeapLoader, through the ONNX model,
    then every registered loss, metric and visualizer by LeapLoader's `run_*` calls. Returns rows and the values."""
    loader = binder["loader"]
    try:
        first = {state: ids[0] for state, ids in loader.get_preprocess_sample_ids().items()}
        session = binder["load_model"]()
    except Exception as exc:
        return [("samples through the model", False, _failure(exc))], []
    rows: list[Row] = []
    samples = []
    for state, sample_id in first.items():
        sample_rows, values = run_sample(loader, session, state, sample_id)
        rows += sample_rows
        samples += [values] if values else []
    return rows, samples


def run_sample(loader: Any, session: Any, state: Any, sample_id: str) -> tuple[list[Row], dict[str, Any]]:
    """One sample: fetched, through the model, then every custom handler; ([(check, passed, detail)], values)."""
    import numpy as np

    where = f"[{state.name}:{sample_id}]"
    try:
        sample = loader.get_sample(state, sample_id)
        image = sample.inputs["image"][None]
        prediction = session.run(None, {session.get_inputs()[0].name: image})[0]
    except Exception as exc:
        return [(f"sample through the model {where}", False, _failure(exc))], {}
    tensors = {"image": image, "gt": sample.gt["labels"][None], "prediction": prediction}
    values: dict[str, Any] = {
        "state": state.name,
        "sample_id": sample_id,
        "metadata": {k: v for k, v in sample.metadata.items() if not sample.metadata_is_none.get(k)},
        "gt": tensors["gt"][0].tolist(),
        "prediction": prediction[0].tolist(),
    }
    rows: list[Row] = [(f"sample through the model {where}", True, "")]
    runners = {"loss": loader.run_custom_loss, "metric": loader.run_metric, "visualizer": loader.run_visualizer}
    for name, handler in custom_handlers().items():
        run = runners[name.split()[0]]
        try:
            unknown = [arg for arg in handler.arg_names if arg not in tensors]
            if unknown:
                raise KeyError(f"argument(s) {unknown}: leap_test.py feeds only {sorted(tensors)}")
            with contextlib.redirect_stdout(io.StringIO()):
                result = run(
                    handler.name, np.array([sample_id]), state, {arg: tensors[arg] for arg in handler.arg_names}
                )
            values[name] = result
            rows.append((f"{name} {where}", True, ""))
        except Exception as exc:
            rows.append((f"{name} {where}", False, _failure(exc)))
    return rows, values


def print_table(rows: Sequence[Row]) -> None:
    width = max(len(name) for name, _, _ in rows)
    print(f"{'check'.ljust(width)} | status")
    print("-" * (width + 9))
    for name, passed, detail in rows:
        print(f"{name.ljust(width)} | {'pass' if passed else 'FAIL'}")
        if not passed and detail:
            print("    " + detail.replace("\n", "\n    "))


def _short(value: Any) -> str:
    import numpy as np

    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items())
    if isinstance(value, np.ndarray):
        return np.array2string(np.atleast_1d(value.squeeze()), precision=3, separator=" ")
    if hasattr(value, "__dataclass_fields__"):  # a visualizer's Leap* object: its type and data shape
        data: Any = getattr(value, "data", getattr(value, "body", None))
        return f"{type(value).__name__}{tuple(np.shape(data))}"
    return repr(value)


def print_sample(values: dict[str, Any]) -> None:
    print(
        f"\n{values['state']} sample {values['sample_id']}: gt {values['gt']}, prediction "
        f"{[round(p, 3) for p in values['prediction']]}"
    )
    known = values["metadata"]
    shown = ", ".join(f"{k}={v!r}" for k, v in known.items() if not k.startswith("attribute_"))
    attributes = sum(k.startswith("attribute_") for k in known)
    print(f"  metadata (the known values): {shown} (+ {attributes} attribute_* fields)")
    for name, value in values.items():
        if name.startswith(("loss ", "metric ", "visualizer ")):
            print(f"  {name}: {_short(value)}")


def choose_folder(given: Path | None, variable: str, sample: Path, volume: bool, setting: str) -> str:
    """Set `variable` for the binder where a folder was chosen; returns where the data comes from."""
    if given is not None:
        os.environ[variable] = str(given)
        return "given"
    if os.environ.get(variable):
        return variable
    if not volume and sample.is_dir():
        os.environ[variable] = str(sample)
        return "the embedded sample; --volume looks up the data volume instead"
    return f"{setting} of project_config.yaml, found on the data volume"


def embedding_session(path: Path) -> Any:
    """An onnxruntime session over the ONNX model with the `embedding` layer (the pooled backbone output the
    platform's latent space is built from) as a second output."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    name = next(out for node in model.graph.node for out in node.output if "/embedding" in out)
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def photo_embeddings(binder: dict, limit: int | None, batch: int = 256) -> tuple[Any, Any, Any]:
    """(the photo subset's rows, predictions, embeddings) through the binder's input encoder and the model."""
    import numpy as np

    photos = next(r for r in binder["preprocess"]() if r.state.value == "additional")
    ids = photos.sample_ids[:limit]
    session = embedding_session(binder["model_path"]())
    outputs = []
    for start in range(0, len(ids), batch):
        images = np.stack([binder["input_image"](i, photos) for i in ids[start : start + batch]])
        prediction, embedding = session.run(None, {session.get_inputs()[0].name: images})
        outputs.append((prediction, embedding.reshape(len(images), -1)))
    rows = photos.data.rows.set_index("image_id").loc[ids].reset_index()
    return rows, np.concatenate([p for p, _ in outputs]), np.concatenate([e for _, e in outputs])


def latent_space_figure(binder: dict, path: Path, limit: int | None) -> None:
    """The photo subset's latent space, as the platform draws it from `embedding` (here t-SNE of the first 50
    principal components), coloured by gender, race and whether Male is right; prints Male accuracy per race x
    gender, the gap the figure shows (for the first label: Male)."""
    import numpy as np

    from celeba import plots
    from celeba.analysis.figures import project

    rows, prediction, embedding = photo_embeddings(binder, limit)
    label = binder["LABELS"][0]
    right = (prediction[:, 0] >= 0.5) == (rows[label].to_numpy() >= 0.5)
    order = np.argsort(~right, kind="stable")  # the mistakes drawn last, on top
    rows, right, embedding = rows.iloc[order].reset_index(drop=True), right[order], embedding[order]
    points = project(embedding, "tsne")
    groups = {
        "gender": rows["gender"].fillna("unknown").to_numpy(),
        "race": rows["race"].fillna("unknown").to_numpy(),
        f"{label} prediction": np.where(right, "right", "wrong"),
    }
    model = Path(binder["model_path"]()).name
    plots.latent_by_group(points, groups, f"{len(rows)} photos of {rows['dataset'].iat[0]}, {model}", path)
    table = rows.assign(right=right).groupby(["race", "gender"])["right"].agg(["size", "mean"])
    print(f"\nlatent space: {path}\n{label} accuracy by race x gender:\n{table.round(3).to_string()}")


def describe_data(binder: dict, sources: dict[str, str]) -> None:
    """Print where the data comes from, the subsets' sizes and the image files screening excluded."""
    config = binder["CONFIG"]
    try:
        data_note = f"{binder['data_dir']()} ({sources['data']})"
        photos_note = "none (photos: null in project_config.yaml)"
        if config.photos is not None:
            photos_note = f"{binder['photos_dir']()[0]} ({sources['photos']})"
        counts = ", ".join(f"{r.state.value} {len(r.sample_ids)}" for r in binder["preprocess"]())
    except Exception as exc:
        data_note = photos_note = "not found"
        counts = f"none ({_failure(exc)})"
    print(f"data:     {data_note}\nphotos:   {photos_note}")
    print(f"samples:  {counts} (sample_limit_per_split: {config.sample_limit_per_split})")
    for path, problem in binder["excluded_images"]().items():
        print(f"excluded: {path}: {problem}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2, help="integration-test samples per subset")
    parser.add_argument("--model", type=Path, help="the ONNX model (default: model in project_config.yaml)")
    parser.add_argument("--data-dir", type=Path, help="a CelebA folder (official layout)")
    parser.add_argument("--photos-dir", type=Path, help="a labelled photo folder (the layout of `photos`)")
    parser.add_argument(
        "--volume", action="store_true", help="folders not given: look them up on the data volume, as the platform"
    )
    parser.add_argument("--latent-space", type=Path, metavar="PNG", help="also draw the photo subset's latent space")
    parser.add_argument("--latent-limit", type=int, help="with --latent-space: the first N photos (default: all)")
    args = parser.parse_args(argv)

    sources = {
        "data": choose_folder(args.data_dir, "CELEBA_DATA_DIR", SAMPLE_DIR, args.volume, "data_root"),
        "photos": choose_folder(args.photos_dir, "CELEBA_PHOTOS_DIR", PHOTOS_SAMPLE_DIR, args.volume, "photos.root"),
    }
    valid, rows, binder = check_dataset()
    samples: list[dict[str, Any]] = []
    if binder:
        binder["use_model"](args.model)
        config = binder["CONFIG"]
        describe_data(binder, sources)
        print(
            f"model:    {binder['model_path']()}\nsettings: {config.path}: labels {list(config.labels)}, "
            f"image_size {config.image_size}, class_weights {'set' if config.class_weights else 'none'}\n"
        )
        rows += run_integration_tests(binder, args.samples)
        handler_rows, samples = run_handlers(binder)
        rows += handler_rows
    print_table(rows)
    for values in samples:
        print_sample(values)
    if binder and args.latent_space:
        latent_space_figure(binder, args.latent_space, args.latent_limit)
    ok = valid and bool(binder) and all(passed for _, passed, _ in rows)
    print(f"\n{'OK' if ok else 'FAILED'}: {sum(p for _, p, _ in rows)}/{len(rows)} checks passed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
