#!/usr/bin/env bash
# Regenerates the README's bias-analysis figures in images/ from the two baseline models of scripts/baseline.sh
# (MobileNetV2 from scratch, 96 px, 20 epochs, 4,000 real CelebA train images): the full report goes to
# reports/celeba8k-test/report.md, the headline PNGs are copied to images/analysis_*.png.
#   bash scripts/figures.sh [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/celeba}
out=reports/celeba8k-test
poetry run analyze --model models/celeba8k-bce.keras --model models/celeba8k-weighted-bce.keras \
  --data-dir "$data" --partition test --out "$out"
mkdir -p images
for name in cohorts_Male_Young train_distribution confusion slices reliability thresholds \
            latent_tsne_celeba8k-bce latent_tsne_celeba8k-weighted-bce \
            gradcam_Young_celeba8k-bce gradcam_Young_celeba8k-weighted-bce; do
  cp "$out/$name.png" "images/analysis_$name.png"
done
echo "copied the headline figures to images/analysis_*.png"
