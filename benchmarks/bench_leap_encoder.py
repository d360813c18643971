"""Tensorleap encoders: is sample access O(1) in the sample's position, and what does one sample cost?

Builds a large index by tiling the embedded sample (distinct ids, real image files), times the input
encoder on its first and last sample (the ratio should be ~1: a lookup, not a walk through the data),
then the per-sample latency of input + GT + metadata, as the platform calls them.

    python benchmarks/bench_leap_encoder.py [--rows 20000] [--repeats 20] [--samples 50]
"""

import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from celeba.config import parse_config  # noqa: E402
from celeba.data import SAMPLE_DIR  # noqa: E402


@dataclass
class BenchConfig:
    rows: int = 20_000  # size of the tiled index
    repeats: int = 20  # timed input-encoder calls on each of the first and the last sample
    samples: int = 50  # samples (spread over the index) for the input + GT + metadata latency
    out: Optional[Path] = ROOT / "benchmarks" / "results" / "leap_encoder.json"


def tiled_index(base: pd.DataFrame, rows: int) -> pd.DataFrame:
    """`rows` rows cycling through `base`, each with its own id (the files are the real sample images)."""
    tiled = pd.concat([base] * -(-rows // len(base)), ignore_index=True).iloc[:rows].copy()
    tiled["image_id"] = [f"{i:06d}-{image_id}" for i, image_id in enumerate(tiled["image_id"])]
    return tiled


def seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main(argv=None) -> dict:
    cfg = parse_config(BenchConfig, argv, __doc__)
    import leap_binder
    from code_loader.contract.enums import DataStateType

    preprocess = leap_binder.response(tiled_index(leap_binder.load_index(SAMPLE_DIR), cfg.rows),
                                      DataStateType.training)
    first, last = preprocess.sample_ids[0], preprocess.sample_ids[-1]
    for sample_id in (first, last):  # warm-up: TensorFlow traces and caches on the first calls
        leap_binder.input_image(sample_id, preprocess)
    times = {first: [], last: []}
    for _ in range(cfg.repeats):  # alternate, so load from other processes hits both alike
        for sample_id in (first, last):
            times[sample_id].append(seconds(lambda: leap_binder.input_image(sample_id, preprocess)))
    first_ms, last_ms = (statistics.median(times[s]) * 1e3 for s in (first, last))

    parts = {"input": leap_binder.input_image, "gt": leap_binder.gt_labels,
             "metadata_attribute": leap_binder.metadata_attributes, "metadata_sample": leap_binder.metadata_sample,
             "metadata_image": leap_binder.metadata_image}
    step = max(1, len(preprocess.sample_ids) // cfg.samples)
    spread = preprocess.sample_ids[::step][:cfg.samples]
    per_part = {name: [] for name in parts}
    for sample_id in spread:
        for name, encoder in parts.items():
            per_part[name].append(seconds(lambda: encoder(sample_id, preprocess)) * 1e3)
    totals = [sum(values) for values in zip(*per_part.values())]

    result = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "image_size": leap_binder.IMAGE_SIZE,
        "input_first_ms": round(first_ms, 3), "input_last_ms": round(last_ms, 3),
        "last_over_first": round(last_ms / first_ms, 3),
        "sample_ms_median": round(statistics.median(totals), 3), "sample_ms_mean": round(statistics.mean(totals), 3),
        "part_ms_mean": {name: round(statistics.mean(values), 3) for name, values in per_part.items()},
    }
    print(f"index: {cfg.rows} rows (tiled sample), image size {leap_binder.IMAGE_SIZE}")
    print(f"input encoder, median of {cfg.repeats}: first sample {first_ms:.2f} ms, last sample {last_ms:.2f} ms, "
          f"last/first = {last_ms / first_ms:.2f}")
    print(f"input + GT + metadata per sample ({len(spread)} samples): median {result['sample_ms_median']:.2f} ms, "
          f"mean {result['sample_ms_mean']:.2f} ms")
    print("  mean per part: " + ", ".join(f"{k} {v:.2f} ms" for k, v in result["part_ms_mean"].items()))
    if cfg.out:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {cfg.out}")
    return result


if __name__ == "__main__":
    main()
