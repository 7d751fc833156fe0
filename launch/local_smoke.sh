#!/usr/bin/env bash
# The local CPU smoke pre-training: tiny model, bundled mini corpus, SLAM-TLM-STM (runs/cpu_smoke.gin).
#   launch/local_smoke.sh [--model_dir=/tmp/slam_smoke] [--dry-run] [--gin.TRAIN_STEPS=50 ...]
# Running it again resumes from the latest checkpoint in the model_dir.
set -euo pipefail

MODEL_DIR=/tmp/slam_smoke
DRY_RUN=0
EXTRA=()
while (($#)); do
  case "$1" in
    --model_dir=*) MODEL_DIR="${1#*=}" ;;
    --dry-run|--dry_run) DRY_RUN=1 ;;
    -h|--help)
      sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'
      exit 0 ;;
    *) EXTRA+=("$1") ;;
  esac
  shift
done

export JAX_PLATFORMS=cpu
if command -v slam-train > /dev/null 2>&1; then
  CMD=(slam-train)
else  # not pip-installed: run from this checkout
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  CMD=(python3 -m slam_jax.cli.train)
fi
CMD+=(--gin_file=runs/cpu_smoke.gin "${EXTRA[@]}" --model_dir="$MODEL_DIR")
if ((DRY_RUN)); then
  echo "+ JAX_PLATFORMS=cpu ${CMD[*]}"
  exit 0
fi
exec "${CMD[@]}"
