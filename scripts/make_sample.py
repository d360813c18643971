"""Build the embedded CelebA sample (data/celeba-sample/) from a CelebA folder.

The sample keeps the official layout and file formats, so every code path that reads a
user's full download is exercised by the tests and by `poetry run train` with no arguments.

    python scripts/make_sample.py ../shared/data/celeba data/celeba-sample --train 200 --validation 50 --test 50
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd

from celeba.data import PARTITIONS, read_attributes, read_partitions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--validation", type=int, default=50)
    parser.add_argument("--test", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    attrs = read_attributes(args.source / "list_attr_celeba.txt")
    parts = read_partitions(args.source / "list_eval_partition.txt")
    present = {p.name for p in (args.source / "img_align_celeba").iterdir()}
    frame = attrs.join(parts, how="inner")
    frame = frame[frame.index.isin(present)]

    chosen = []
    for name, n in (("train", args.train), ("validation", args.validation), ("test", args.test)):
        part = frame[frame["partition"] == name]
        # Stratify on the Male x Young cohort so every cohort is present even in a tiny sample.
        chosen.append(part.groupby(["Male", "Young"]).sample(frac=n / len(part), random_state=args.seed))
    ids = sorted(pd.concat(chosen).index)

    images = args.dest / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        shutil.copy2(args.source / "img_align_celeba" / image_id, images / image_id)

    keep = set(ids)
    for name in ("list_attr_celeba.txt",):
        lines = (args.source / name).read_text().splitlines()
        rows = [line for line in lines[2:] if line.split(maxsplit=1)[0] in keep]
        (args.dest / name).write_text("\n".join([str(len(rows)), lines[1], *rows]) + "\n")
    for name in ("list_eval_partition.txt", "identity_CelebA.txt"):
        if (args.source / name).exists():
            rows = [line for line in (args.source / name).read_text().splitlines() if line.split(maxsplit=1)[0] in keep]
            (args.dest / name).write_text("\n".join(rows) + "\n")
    print(f"wrote {len(ids)} images to {args.dest} ({PARTITIONS})")


if __name__ == "__main__":
    main()
