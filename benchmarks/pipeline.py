"""`python -m benchmarks.pipeline`: tf.data images/s per core, and the cores it takes to feed a GPU.

For every image size and core count (1, 2: the tf.data private thread pool and one thread per op) it
times, in the same run, images per wall second and images per CPU-second of the process (the per-core rate,
which holds even when other work shares the cores):
- `decode_resize`: today's training pipeline (`make_dataset`: JPEG crop-decode, resize, shuffle, batch);
- `full_decode`: the same with the previous decode (whole JPEG, then crop), to show the crop-decode gain;
- `cpu_augment`: `decode_resize` plus the random augmentation run in tf.data on the CPU (a batched map of
  `make_augmenter`), as before it moved into the training graph;
- `tfrecords`: the same pipeline reading `celeba.prepare` shards (uint8 at the target size) instead of JPEGs.
Then `cores_to_feed_gpu` = GPU images/s / images per CPU-second. The GPU rate is `--gpu-rate` when measured;
otherwise a published figure (GPU_REFERENCE) scaled by pixel count, which is an estimate, not a measurement.
The best of `--repeats` passes counts (the machine may be shared); the load average is recorded.
Writes benchmarks/results/pipeline.json.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from celeba.config import opt
from celeba.data import SAMPLE_DIR

LABELS = ("Male", "Young")

#: A published MobileNetV2 training throughput: timm's benchmark CSV, row `mobilenetv2_100`
#: (github.com/huggingface/pytorch-image-models, results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv;
#: columns train_samples_per_sec, train_batch_size, train_img_size). PyTorch 1.12, AMP, channels-last.
GPU_REFERENCE = {
    "images_per_s": 2313.1,
    "image_size": 224,
    "batch_size": 512,
    "gpu": "RTX 3090",
    "source": "huggingface/pytorch-image-models results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv, "
    "row mobilenetv2_100 (train_samples_per_sec)",
}


@dataclass
class PipelineBenchConfig:
    """tf.data images/s per core at each size, with and without CPU-side augmentation, JPEG vs TFRecords."""

    data_dir: Path = opt(SAMPLE_DIR, "a CelebA folder; e.g. ../shared/data/celeba")
    images: int = opt(2000, "images per pass (the first batch of a pass is not timed)")
    sizes: tuple[int, ...] = opt((96, 128), "image sizes")
    cores: tuple[int, ...] = opt((1, 2), "tf.data private thread pool sizes")
    batch_size: int = opt(64, "batch size")
    repeats: int = opt(3, "passes per measurement; the fastest counts")
    records: bool = opt(True, "also prepare TFRecords (in a temporary folder) and time reading them")
    gpu_rate: float | None = opt(
        None,
        "measured GPU training images/s at the first size",
        none="the published figure (GPU_REFERENCE) scaled by pixels",
    )
    out: Path = opt(Path("benchmarks/results/pipeline.json"), "the JSON report")


def gpu_rate_at(size: int, measured: float | None = None, measured_size: int | None = None) -> dict[str, Any]:
    """The GPU images/s to feed at `size`: a measurement, or the published figure scaled by pixel count.

    Scaling by pixels assumes the step time is proportional to the input area, roughly right for
    convolutions but optimistic for small images, where fixed per-step costs weigh more.
    """
    if measured is not None:
        base, base_size, how = measured, measured_size or size, "measured (--gpu-rate)"
    else:
        base, base_size = GPU_REFERENCE["images_per_s"], GPU_REFERENCE["image_size"]
        how = f"estimate: {GPU_REFERENCE['source']} at {base_size} px x ({base_size}/size)^2"
    return {"images_per_s": round(base * (base_size / size) ** 2, 1), "how": how}


def one_pass(dataset) -> tuple[float, float]:
    """(images/s of wall time, images per CPU-second of this process) over one pass without its first batch.

    CPU time counts every thread of the process, so images per CPU-second is the per-core rate even when
    other processes share the cores.
    """
    iterator = iter(dataset)
    next(iterator)  # start-up, tracing
    n, start, start_cpu = 0, time.perf_counter(), time.process_time()
    for x, _ in iterator:
        n += int(x.shape[0])
    return n / (time.perf_counter() - start), n / max(time.process_time() - start_cpu, 1e-9)


def measure(datasets: dict[str, Any], repeats: int) -> dict[str, tuple[float, float]]:
    """Best of `repeats` passes of each dataset, taken in turns so that a burst of load hits all alike."""
    best = {name: (0.0, 0.0) for name in datasets}
    for _ in range(repeats):
        for name, dataset in datasets.items():
            wall, cpu = one_pass(dataset)
            best[name] = (round(max(best[name][0], wall), 1), round(max(best[name][1], cpu), 1))
    return best


def with_cpu_augmentation(dataset, seed: int = 0):
    """The old placement: random augmentation of each batch inside tf.data, on the CPU."""
    import tensorflow as tf

    from celeba.data import make_augmenter

    augment = make_augmenter(seed)
    return dataset.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)


def full_decode_dataset(rows, size: int, batch_size: int, threads: int):
    """`make_dataset` with the previous decode: the whole JPEG, then the centre crop."""
    import tensorflow as tf

    from celeba.data import decode_image, labels_array, pipeline_options, preprocess_image

    ds = tf.data.Dataset.from_tensor_slices((rows["path"].to_numpy(dtype=str), labels_array(rows, LABELS)))
    ds = ds.shuffle(len(rows), seed=0).map(
        lambda p, y: (preprocess_image(decode_image(tf.io.read_file(p), p), size), y),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(pipeline_options(True, threads))


def run(cfg: PipelineBenchConfig) -> dict[str, Any]:
    import tensorflow as tf

    from celeba.data import load_index, make_dataset

    rows = load_index(cfg.data_dir).iloc[: cfg.images].reset_index(drop=True)
    for path in rows["path"]:  # warm the page cache, so the first configuration pays no disk reads
        tf.io.gfile.GFile(path, "rb").read()
    load_start = [round(v, 2) for v in os.getloadavg()]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in cfg.sizes:
            record_rows = None
            if cfg.records:
                from celeba.prepare import PrepareConfig, prepare

                folder = Path(tmp) / f"records-{size}"
                prepare(
                    PrepareConfig(
                        data_dir=cfg.data_dir, out=folder, image_size=size, limit=cfg.images, check_images=False
                    )
                )
                index = load_index(folder)
                record_rows = index[index["image_id"].isin(set(rows["image_id"]))].reset_index(drop=True)
            for threads in cfg.cores:
                print(f"size {size}, {threads} core(s) ...", file=sys.stderr)
                plain = make_dataset(rows, LABELS, size, cfg.batch_size, training=True, threads=threads)
                datasets = {
                    "decode_resize": plain,
                    "full_decode": full_decode_dataset(rows, size, cfg.batch_size, threads),
                    "cpu_augment": with_cpu_augmentation(plain),
                }
                if record_rows is not None:
                    datasets["tfrecords"] = make_dataset(
                        record_rows, LABELS, size, cfg.batch_size, training=True, threads=threads
                    )
                measured = measure(datasets, cfg.repeats)
                gpu = gpu_rate_at(size, cfg.gpu_rate, cfg.sizes[0])
                for name, (wall, per_core) in measured.items():
                    results.append(
                        {
                            "image_size": size,
                            "cores": threads,
                            "pipeline": name,
                            "images_per_s": wall,
                            "images_per_cpu_s": per_core,
                            "cores_to_feed_gpu": round(gpu["images_per_s"] / per_core, 1),
                            "gpu_images_per_s": gpu["images_per_s"],
                        }
                    )
    report = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "tensorflow": tf.__version__,
            "load_average_at_start": load_start,
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        },
        "images": len(rows),
        "gpu_reference": GPU_REFERENCE,
        "gpu_rate": {size: gpu_rate_at(size, cfg.gpu_rate, cfg.sizes[0]) for size in cfg.sizes},
        "results": results,
    }
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(report, indent=2))
    return report


def report_table(report: dict[str, Any]) -> None:
    import pandas as pd

    results = pd.DataFrame(report["results"])
    table = results.pivot_table(
        index=["image_size", "cores"], columns="pipeline", values=["images_per_cpu_s", "images_per_s"], sort=False
    )
    m = report["machine"]
    print(
        f"\nimages per CPU-second (= per core) and per wall second ({report['images']} images; load average "
        f"{m['load_average_at_start']} -> {m['load_average_at_end']} on {m['cpus']} cores)\n{table.to_string()}"
    )
    feed = results.query("cores == 1").pivot_table(
        index="image_size", columns="pipeline", values="cores_to_feed_gpu", sort=False
    )
    print(f"\ncores to feed the GPU rate {report['gpu_rate']}\n{feed.to_string()}\n\nwrote {report['config']['out']}")


def main(argv: list[str] | None = None) -> None:
    from celeba.cli import run_script

    run_script(PipelineBenchConfig, lambda cfg: report_table(run(cfg)), argv)


if __name__ == "__main__":
    main()
