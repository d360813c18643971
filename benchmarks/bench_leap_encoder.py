"""Tensorleap encoders: is sample access O(1) in the sample's position, and what does one sample cost?

Builds a large index by tiling the embedded sample (distinct ids, real image files), times the input
encoder on its first and last sample (the ratio should be ~1: a lookup, not a walk through the data),
then the per-sample latency of input + GT + metadata, as the platform calls them.

With `--data-dir` (a real CelebA folder), also compares, in the same process and alternating sample by
sample, the binder against the reference access pattern of many integrations: every encoder (input, GT,
metadata: three per sample) finds its sample with `tf.data.Dataset...skip(idx).take(1)`, walking the
dataset up to the sample each time. Both start at training index `--reference-index`.

    python benchmarks/bench_leap_encoder.py [--rows 20000] [--repeats 20] [--samples 50]
    python benchmarks/bench_leap_encoder.py --data-dir ../shared/data/celeba --reference-index 15000
"""

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from celeba.config import opt  # noqa: E402
from celeba.data import SAMPLE_DIR  # noqa: E402
from celeba.flags import parse_config  # noqa: E402


@dataclass
class BenchConfig:
    rows: int = opt(20_000, "size of the tiled index")
    repeats: int = opt(20, "timed input-encoder calls on each of the first and the last sample")
    samples: int = opt(50, "samples (spread over the index) for the input + GT + metadata latency")
    out: Path | None = opt(ROOT / "benchmarks" / "results" / "leap_encoder.json", "the JSON report", none="no file")
    data_dir: Path | None = opt(
        None,
        "a real CelebA folder: adds the comparison with the tf.data skip pattern",
        none="none (the embedded sample only)",
    )
    reference_index: int = opt(15_000, "first training index of that comparison")
    reference_samples: int = opt(20, "consecutive samples from there, each timed both ways")


def tiled_index(base: pd.DataFrame, rows: int) -> pd.DataFrame:
    """`rows` rows cycling through `base`, each with its own id (the files are the real sample images)."""
    tiled = pd.concat([base] * -(-rows // len(base)), ignore_index=True).iloc[:rows].copy()
    tiled["image_id"] = [f"{i:06d}-{image_id}" for i, image_id in enumerate(tiled["image_id"])]
    return tiled


def seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


class SkipReference:
    """The reference access pattern: one tf.data pipeline over the partition; each encoder call walks it with
    `.skip(idx).take(1)` to its sample, then decodes (input), or reads the labels (GT) or attributes (metadata)."""

    def __init__(self, rows: pd.DataFrame, labels, image_size: int):
        import tensorflow as tf

        from celeba import data

        self.image_size, self.load_image = image_size, data.load_image
        self.dataset = tf.data.Dataset.from_tensor_slices(
            {
                "path": rows["path"].to_numpy(),
                "labels": data.labels_array(rows, labels),
                "attributes": rows[list(data.ATTRIBUTES)].to_numpy("int32"),
            }
        )

    def _item(self, idx: int) -> dict:
        return next(iter(self.dataset.skip(idx).take(1)))

    def sample(self, idx: int) -> tuple:
        image = self.load_image(self._item(idx)["path"], self.image_size).numpy()
        gt = self._item(idx)["labels"].numpy()
        attributes = self._item(idx)["attributes"].numpy()
        return image, gt, attributes


def compare_with_reference(cfg: "BenchConfig") -> dict:
    """Median ms per sample (input + GT + attribute metadata) at `cfg.reference_index`: binder vs skip pattern."""
    from code_loader.contract.enums import DataStateType

    import leap_binder
    from celeba import data

    rows = data.split(leap_binder.load_index(Path(cfg.data_dir)), "train")
    if len(rows) < cfg.reference_index + cfg.reference_samples:
        raise SystemExit(
            f"error: {cfg.data_dir}: its training partition has {len(rows)} usable images, fewer "
            f"than --reference-index + --reference-samples"
        )
    preprocess = leap_binder.response(rows, DataStateType.training)
    reference = SkipReference(rows, leap_binder.LABELS, leap_binder.CONFIG.image_size)

    def ours(idx: int) -> tuple:
        sample_id = preprocess.sample_ids[idx]
        return (
            leap_binder.input_image(sample_id, preprocess),
            leap_binder.gt_labels(sample_id, preprocess),
            leap_binder.metadata_attributes(sample_id, preprocess),
        )

    start = cfg.reference_index
    for run in (ours, reference.sample):  # warm-up (tracing, first file reads), then the same samples both ways
        run(start - 1)
    times = {"reference_skip": [], "binder": []}
    for idx in range(start, start + cfg.reference_samples):
        a, b = reference.sample(idx), ours(idx)
        assert (a[0] == b[0]).all() and (a[1] == b[1]).all(), f"index {idx}: both ways must read the same sample"
        times["reference_skip"].append(seconds(partial(reference.sample, idx)) * 1e3)
        times["binder"].append(seconds(partial(ours, idx)) * 1e3)
    medians = {name: round(statistics.median(values), 2) for name, values in times.items()}
    return {
        "data_dir": str(cfg.data_dir),
        "train_rows": len(rows),
        "index": start,
        "samples": cfg.reference_samples,
        "ms_per_sample_median": medians,
        "reference_over_binder": round(medians["reference_skip"] / medians["binder"], 2),
    }


def main(argv=None) -> dict:
    cfg = parse_config(BenchConfig, argv, __doc__)
    from code_loader.contract.enums import DataStateType

    import leap_binder

    preprocess = leap_binder.response(tiled_index(leap_binder.load_index(SAMPLE_DIR), cfg.rows), DataStateType.training)
    first, last = preprocess.sample_ids[0], preprocess.sample_ids[-1]
    for sample_id in (first, last):  # warm-up: TensorFlow traces and caches on the first calls
        leap_binder.input_image(sample_id, preprocess)
    times = {first: [], last: []}
    for _ in range(cfg.repeats):  # alternate, so load from other processes hits both alike
        for sample_id in (first, last):
            times[sample_id].append(seconds(partial(leap_binder.input_image, sample_id, preprocess)))
    first_ms, last_ms = (statistics.median(times[s]) * 1e3 for s in (first, last))

    parts = {
        "input": leap_binder.input_image,
        "gt": leap_binder.gt_labels,
        "metadata_attribute": leap_binder.metadata_attributes,
        "metadata_sample": leap_binder.metadata_sample,
        "metadata_image": leap_binder.metadata_image,
    }
    step = max(1, len(preprocess.sample_ids) // cfg.samples)
    spread = preprocess.sample_ids[::step][: cfg.samples]
    per_part = {name: [] for name in parts}
    for sample_id in spread:
        for name, encoder in parts.items():
            per_part[name].append(seconds(partial(encoder, sample_id, preprocess)) * 1e3)
    totals = [sum(values) for values in zip(*per_part.values())]

    result = {
        "config": {
            k: (str(v.relative_to(ROOT)) if v.is_absolute() and v.is_relative_to(ROOT) else str(v))
            if isinstance(v, Path)
            else v
            for k, v in asdict(cfg).items()
        },
        "image_size": leap_binder.CONFIG.image_size,
        "input_first_ms": round(first_ms, 3),
        "input_last_ms": round(last_ms, 3),
        "last_over_first": round(last_ms / first_ms, 3),
        "sample_ms_median": round(statistics.median(totals), 3),
        "sample_ms_mean": round(statistics.mean(totals), 3),
        "part_ms_mean": {name: round(statistics.mean(values), 3) for name, values in per_part.items()},
    }
    print(f"index: {cfg.rows} rows (tiled sample), image size {leap_binder.CONFIG.image_size}")
    print(
        f"input encoder, median of {cfg.repeats}: first sample {first_ms:.2f} ms, last sample {last_ms:.2f} ms, "
        f"last/first = {last_ms / first_ms:.2f}"
    )
    print(
        f"input + GT + metadata per sample ({len(spread)} samples): median {result['sample_ms_median']:.2f} ms, "
        f"mean {result['sample_ms_mean']:.2f} ms"
    )
    print("  mean per part: " + ", ".join(f"{k} {v:.2f} ms" for k, v in result["part_ms_mean"].items()))
    if cfg.data_dir:
        result["reference"] = compare_with_reference(cfg)
        ref = result["reference"]
        print(
            f"{ref['data_dir']}, training index {ref['index']}.. ({ref['samples']} samples of {ref['train_rows']}), "
            f"input + GT + attribute metadata, median per sample: tf.data skip x3 "
            f"{ref['ms_per_sample_median']['reference_skip']:.2f} ms, binder "
            f"{ref['ms_per_sample_median']['binder']:.2f} ms ({ref['reference_over_binder']:.1f}x)"
        )
    if cfg.out:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {cfg.out}")
    return result


if __name__ == "__main__":
    main()
