#!/usr/bin/env bash
# Regenerates the bias-analysis figures in images/ from the four pretrained models of scripts/pretrained.sh
# (MobileNetV2 from ImageNet weights, 96 px, 2 head + 4 fine-tuning epochs, 15,979 real CelebA train images; plain
# BCE, weighted BCE, cohort-balanced sampling, focal loss): the full report goes to reports/celeba16k-test/report.md,
# the headline PNGs are copied to images/analysis_*.png.
#   bash scripts/figures.sh [DATA_DIR]
# A baseline model that is missing is skipped with a warning (the report then covers the others).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/celeba}
out=reports/celeba16k-test
models=()
for run in bce weighted-bce balanced focal; do
  if [[ -f models/celeba16k-$run.keras ]]; then models+=(--model "models/celeba16k-$run.keras")
  else echo "warning: models/celeba16k-$run.keras not found (run scripts/pretrained.sh); skipped" >&2; fi
done
(( ${#models[@]} )) || { echo "error: no pretrained model in models/" >&2; exit 2; }
poetry run analyze "${models[@]}" --data-dir "$data" --partition test --out "$out"
mkdir -p images
for name in cohorts_Male_Young train_distribution confusion slices reliability thresholds \
            latent_tsne_celeba16k-bce latent_tsne_celeba16k-balanced \
            gradcam_Young_celeba16k-bce gradcam_Young_celeba16k-balanced; do
  if [[ -f $out/$name.png ]]; then cp "$out/$name.png" "images/analysis_$name.png"; fi
done
echo "copied the headline figures to images/analysis_*.png (full report: $out/report.md)"
