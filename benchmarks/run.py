"""`poetry run python -m benchmarks.run`: input pipeline, training, inference and HTTP service speed, side by side.

Every figure comes from the same run on the same machine, so ratios are meaningful even when the
absolute numbers are noisy. Prints a table and writes JSON (default benchmarks/results/latest.json).
Defaults run in a few minutes on the embedded sample; pass --data-dir and larger --images/--steps for
steadier numbers. Timings exclude the first (tracing / warm-up) step of everything.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from celeba.config import opt
from celeba.data import SAMPLE_DIR

LABELS = ("Male", "Young")


@dataclass
class BenchConfig:
    """Benchmark the input pipeline, training, inference (Keras/TFLite/ONNX) and the HTTP service."""

    data_dir: Path = opt(SAMPLE_DIR, "a CelebA folder (official or Kaggle layout)")
    images: int = opt(256, "images per pipeline pass and per training epoch")
    steps: int = opt(8, "timed training steps per configuration (after one warm-up epoch)")
    sizes: tuple[int, ...] = opt((96, 128), "training image sizes")
    batch_size: int = opt(32, "images per batch")
    model: Path | None = opt(None, "a trained .keras for inference and service", none="a random 96 px model")
    latency_calls: int = opt(100, "single-image calls per inference backend")
    requests: int = opt(100, "HTTP requests in the load loop")
    concurrency: int = opt(4, "client threads of the load loop")
    sections: tuple[str, ...] = opt(("pipeline", "training", "inference", "service"), "what to measure")
    out: Path = opt(Path("benchmarks/results/latest.json"), "the JSON report")


# --------------------------------------------------------------------------- helpers


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("nan")


def percentiles(samples: Iterable[float]) -> dict[str, float]:
    ms = np.asarray(list(samples)) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def timed_pass(batches: Iterable, count: Callable[[Any], int]) -> tuple[int, float]:
    """(items, seconds) over an iterable, not counting the first batch (start-up, tracing)."""
    iterator = iter(batches)
    next(iterator)
    n, start = 0, time.perf_counter()
    for batch in iterator:
        n += count(batch)
    return n, time.perf_counter() - start


def naive_loader(paths: list[str], size: int, batch_size: int):
    """What one writes without tf.data: one image at a time with PIL and numpy, in the training loop's thread."""
    from PIL import Image

    batch = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
        batch.append(np.asarray(image, np.float32))
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def fresh_model(size: int):
    import keras

    from celeba.losses import make_loss
    from celeba.model import build_model
    from celeba.train import Phase, compile_for

    keras.backend.clear_session()  # drop the previous models' graphs and state
    keras.utils.set_random_seed(0)
    model = build_model(len(LABELS), size, "none")
    compile_for(model, Phase("bench", 1, 1e-3, True, False), make_loss("bce", None), steps=100)
    return model


# --------------------------------------------------------------------------- sections


def bench_pipeline(cfg: BenchConfig, rows, size: int = 96) -> dict[str, Any]:
    """tf.data (the training pipeline, augmentation on) vs the naive loader vs what training consumes."""
    import tensorflow as tf

    from benchmarks.pipeline import with_cpu_augmentation
    from celeba.callbacks import Throughput
    from celeba.data import make_dataset

    count = lambda b: int(b[0].shape[0])  # noqa: E731
    plain = rate(*timed_pass(make_dataset(rows, LABELS, size, cfg.batch_size, training=True), count))
    # The augmentation now runs in the training graph; this times it where it used to be, in tf.data on the CPU.
    pipeline = rate(
        *timed_pass(with_cpu_augmentation(make_dataset(rows, LABELS, size, cfg.batch_size, training=True)), count)
    )
    naive = rate(*timed_pass(naive_loader(list(rows["path"]), size, cfg.batch_size), len))

    # Training consumption: the model's own speed on batches already in memory (no input cost at all).
    model = fresh_model(size)
    x = tf.random.uniform((cfg.batch_size, size, size, 3), 0, 255)
    y = tf.cast(tf.random.uniform((cfg.batch_size, len(LABELS))) > 0.5, tf.float32)
    timer = Throughput()
    in_memory = tf.data.Dataset.from_tensors((x, y)).repeat(cfg.steps)
    model.fit(in_memory, epochs=3, verbose=0, callbacks=[timer], shuffle=False)
    consumption = rate(cfg.steps * cfg.batch_size, min(timer.epoch_seconds[1:]))
    return {
        "image_size": size,
        "tf_data_images_per_s": pipeline,
        "tf_data_no_augment_images_per_s": plain,
        "naive_pil_images_per_s": naive,
        "training_consumption_images_per_s": consumption,
        "ratio_pipeline_to_training": round(pipeline / consumption, 2),
        "ratio_pipeline_to_naive": round(pipeline / naive, 2),
        "note": "tf_data_images_per_s: with the augmentation in tf.data on the CPU (its old place; see "
        "benchmarks/pipeline.py); the naive loader and the no-augment run (today's pipeline) have none",
    }


def bench_training(cfg: BenchConfig, rows) -> list[dict[str, Any]]:
    """model.fit images/s per size, without and with caching decoded images (best of epochs 2 and 3)."""
    from celeba.callbacks import Throughput
    from celeba.data import make_dataset

    results = []
    train_rows = rows.iloc[: cfg.steps * cfg.batch_size]
    for size in cfg.sizes:
        for cache in (False, True):
            model = fresh_model(size)
            ds = make_dataset(train_rows, LABELS, size, cfg.batch_size, training=True, cache=cache)
            timer = Throughput()
            # Epoch 1: tracing (and filling the cache); epochs 2 and 3 are timed, the faster one counts
            # (one epoch is a few seconds: a neighbour's burst of CPU can halve it).
            model.fit(ds, epochs=3, verbose=0, callbacks=[timer], shuffle=False)
            results.append(
                {
                    "image_size": size,
                    "cache": cache,
                    "train_images_per_s": rate(len(train_rows), min(timer.epoch_seconds[1:])),
                }
            )
    return results


def bench_inference(cfg: BenchConfig, model_path: Path, workdir: Path) -> list[dict[str, Any]]:
    """Keras vs TFLite float16 vs TFLite int8 (vs ONNX): batch throughput, single-image latency, file size."""
    import shutil

    from celeba.export import ExportConfig, export
    from celeba.predict import load_predictor_model

    source = workdir / "bench.keras"  # exports land beside their model: a copy keeps them out of models/
    shutil.copy(model_path, source)
    if model_path.with_suffix(".json").is_file():  # the run card, when there is one (labels may be in the model)
        shutil.copy(model_path.with_suffix(".json"), source.with_suffix(".json"))
    try:
        import tf2onnx  # noqa: F401

        formats: tuple = ("tflite", "onnx")
    except ImportError as exc:  # tf2onnx/onnxruntime missing: the rest still runs
        print(f"skipping ONNX: {exc}", file=sys.stderr)
        formats = ("tflite",)
    cards = export(  # one call: one model load, one SavedModel, one Keras pass for the parity checks
        ExportConfig(
            model=source,
            format=formats,
            quantize=("float16", "int8"),
            data_dir=cfg.data_dir,
            parity_limit=64,
            representative=64,
            min_agreement=0.0,
            tolerance=1.0,
            force=True,
        )
    )  # parity: the export's job
    files = {"keras": model_path} | {
        (f"tflite-{done.quantize}" if done.format == "tflite" else "onnx"): done.model for done in cards
    }

    results = []
    for name, path in files.items():
        infer, _, size = load_predictor_model(path)
        rng = np.random.default_rng(0)
        batch = rng.uniform(0, 255, (cfg.batch_size, size, size, 3)).astype(np.float32)
        single = batch[:1]
        for _ in range(3):  # warm-up: tracing, tensor allocation
            infer(batch)
            infer(single)
        rounds = max(2, cfg.images // cfg.batch_size)
        start = time.perf_counter()
        for _ in range(rounds):
            infer(batch)
        throughput = rate(rounds * cfg.batch_size, time.perf_counter() - start)
        latencies = []
        for _ in range(cfg.latency_calls):
            start = time.perf_counter()
            infer(single)
            latencies.append(time.perf_counter() - start)
        results.append(
            {
                "backend": name,
                "image_size": size,
                "file_mb": round(Path(path).stat().st_size / 1e6, 2),
                "batch_images_per_s": throughput,
                **percentiles(latencies),
            }
        )
    return results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_service(cfg: BenchConfig, model_path: Path, image: Path) -> dict[str, Any]:
    """`serve` in its own process on 127.0.0.1; a bounded pool of client threads posts one photo at a time."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    serve = Path(sys.executable).with_name("serve")
    command = [str(serve)] if serve.exists() else [sys.executable, "-m", "celeba", "serve"]
    server = subprocess.Popen(
        [*command, "--model", str(model_path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                requests.get(f"{url}/health", timeout=2).raise_for_status()
                break
            except requests.RequestException:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"serve did not start on {url}") from None
                time.sleep(0.5)
        data = image.read_bytes()
        session = requests.Session()

        def post(_) -> float:
            start = time.perf_counter()
            r = session.post(f"{url}/predict", files={"file": (image.name, data, "image/jpeg")}, timeout=60)
            r.raise_for_status()
            return time.perf_counter() - start

        for _ in range(3):
            post(None)  # warm-up
        start = time.perf_counter()
        with ThreadPoolExecutor(cfg.concurrency) as pool:
            latencies = list(pool.map(post, range(cfg.requests)))
        seconds = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(30)
    return {
        "model": model_path.name,
        "requests": cfg.requests,
        "concurrency": cfg.concurrency,
        "image": f"{image.name} (face detection on)",
        "requests_per_s": rate(cfg.requests, seconds),
        **percentiles(latencies),
    }


# --------------------------------------------------------------------------- the command


def machine() -> dict[str, Any]:
    import keras
    import tensorflow as tf

    return {
        "cpus": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def print_table(report: dict[str, Any]) -> None:
    import pandas as pd

    m = report["machine"]
    print(
        f"\nmachine: {m['cpus']} CPU cores, {m['gpus']} GPU, TensorFlow {m['tensorflow']}, "
        f"load average at start {m['load_average_at_start']}"
    )
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        if "pipeline" in report:
            print("\ninput pipeline (images/s)\n" + pd.Series(report["pipeline"]).to_string())
        for key, title in (
            ("training", "training"),
            ("inference", "inference"),
        ):
            if key in report:
                print(f"\n{title}\n" + pd.DataFrame(report[key]).to_string(index=False))
        if "service" in report:
            print("\nHTTP service\n" + pd.Series(report["service"]).to_string())
    print(f"\nwrote {report['out']}")


def run(cfg: BenchConfig) -> dict[str, Any]:
    from celeba.checkpoint import save_atomic
    from celeba.data import load_index
    from celeba.runcard import RunCard

    index = load_index(cfg.data_dir)
    rows = index.iloc[: cfg.images].reset_index(drop=True)
    report: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "machine": machine(),
        "images_available": len(index),
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_path = cfg.model
        if model_path is None and {"inference", "service"} & set(cfg.sections):
            model_path = workdir / "random96.keras"  # same speed as a trained 96 px model
            save_atomic(fresh_model(96), model_path)
            RunCard(model=str(model_path), config={"labels": list(LABELS), "image_size": 96}).save(model_path)
        if "pipeline" in cfg.sections:
            print("benchmarking the input pipeline ...", file=sys.stderr)
            report["pipeline"] = bench_pipeline(cfg, rows)
        if "training" in cfg.sections:
            print("benchmarking training ...", file=sys.stderr)
            report["training"] = bench_training(cfg, rows)
        if "inference" in cfg.sections:
            print("benchmarking inference ...", file=sys.stderr)
            report["inference"] = bench_inference(cfg, model_path, workdir)
        if "service" in cfg.sections:
            print("benchmarking the HTTP service ...", file=sys.stderr)
            report["service"] = bench_service(cfg, model_path, Path(rows["path"].iloc[1]))
    report["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    report["out"] = str(cfg.out)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(report, indent=2))
    print_table(report)
    return report


def main(argv: list[str] | None = None) -> None:
    from celeba.cli import run_script

    run_script(BenchConfig, run, argv)


if __name__ == "__main__":
    main()
