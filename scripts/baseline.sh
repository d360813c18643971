#!/usr/bin/env bash
# The README's baseline: both losses trained from scratch (no ImageNet weights can be had offline) on a CelebA
# folder, then evaluated on its test partition. Default: the 8,021 real CelebA images in ../shared/data/celeba.
#   bash scripts/baseline.sh [DATA_DIR]
set -euo pipefail
data=${1:-../shared/data/celeba}
for loss in bce weighted-bce; do
  poetry run train --data-dir "$data" --loss "$loss" --weights none --image-size 96 --epochs 20 --cache \
    --name "celeba8k-$loss"
  poetry run evaluate --model "models/celeba8k-$loss.keras" --data-dir "$data" --partition test \
    --out "reports/celeba8k-$loss-test"
done
