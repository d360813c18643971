#!/usr/bin/env bash
# Regenerates the README's bias-analysis figures in images/ from the two baseline models of scripts/baseline.sh
# (MobileNetV2 from scratch, 96 px, 20 epochs, 4,000 real CelebA train images): the full report goes to
# reports/celeba8k-test/report.md, the headline PNGs are copied to images/analysis_*.png.
#   bash scripts/figures.sh [DATA_DIR]
# A baseline model that is missing is skipped with a warning (the report then covers the others).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/celeba}
out=reports/celeba8k-test
models=()
for loss in bce weighted-bce; do
  if [[ -f models/celeba8k-$loss.keras ]]; then models+=(--model "models/celeba8k-$loss.keras")
  else echo "warning: models/celeba8k-$loss.keras not found (run scripts/baseline.sh); skipped" >&2; fi
done
(( ${#models[@]} )) || { echo "error: no baseline model in models/" >&2; exit 2; }
poetry run analyze "${models[@]}" --data-dir "$data" --partition test --out "$out"
mkdir -p images
for name in cohorts_Male_Young train_distribution confusion slices reliability thresholds \
            latent_tsne_celeba8k-bce latent_tsne_celeba8k-weighted-bce \
            gradcam_Young_celeba8k-bce gradcam_Young_celeba8k-weighted-bce; do
  if [[ -f $out/$name.png ]]; then cp "$out/$name.png" "images/analysis_$name.png"; fi
done
echo "copied the headline figures to images/analysis_*.png (full report: $out/report.md)"
