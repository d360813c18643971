#!/usr/bin/env bash
# The README's pretrained models (issue 12): MobileNetV2 from ImageNet weights (TF-slim checkpoint, ../shared/weights),
# 96 px, 2 head epochs on a frozen backbone + 4 fine-tuning epochs, on the 15,979 shared train images; four bias
# mitigations side by side, then the learning curve (1k/4k/8k train images, plain BCE). Each run resumes if killed.
#   bash scripts/pretrained.sh [DATA_DIR] [WEIGHTS] [RUN ...]
set -euo pipefail
data=${1:-../shared/data/celeba}
weights=${2:-../shared/weights/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5}
shift $(( $# > 2 ? 2 : $# ))
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(bce weighted-bce balanced focal curve-1k curve-4k curve-8k)
common=(--data-dir "$data" --weights "$weights" --image-size 96 --epochs 6 --freeze-epochs 2 --batch-size 64
        --cache --no-check-images --resume)
for run in "${runs[@]}"; do
  case "$run" in
    bce|weighted-bce|focal) args=(--loss "$run") ;;
    balanced) args=(--loss bce --sampling balanced) ;;
    curve-*) n=${run#curve-}; args=(--loss bce --train-limit $(( ${n%k} * 1000 ))) ;;
    *) echo "error: unknown run $run" >&2; exit 2 ;;
  esac
  name=celeba16k-$run; [[ $run == curve-* ]] && name=$run-bce
  [ -f "models/$name.json" ] && { echo "skip $name: models/$name.json exists"; continue; }
  poetry run train "${common[@]}" "${args[@]}" --name "$name"
done
