"""Split a labelled photo folder once into train / validation / evaluation, stratified, and write `file,split`.

    python scripts/split_photos.py ../shared/data/utkface/labels.csv data/utkface/split.csv

The committed `data/utkface/split.csv` was made by exactly this command (seed 0, 60/20/20, strata race x gender x
age band). Tune on train and validation only; report on evaluation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd

from celeba.sources import age_band, split_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("labels_csv", type=Path, help="CSV with a file column and the strata columns")
    parser.add_argument("out", type=Path, help="where file,split is written")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strata", nargs="+", default=["race", "gender", "age_band"])
    args = parser.parse_args()
    table = pd.read_csv(args.labels_csv)
    if "age" in table.columns:
        table["age_band"] = age_band(table["age"]).astype(str)
    split = split_folder(table, args.strata, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    split.to_csv(args.out, index=False)
    print(split["split"].value_counts().to_string())


if __name__ == "__main__":
    main()
