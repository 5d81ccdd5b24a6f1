#!/usr/bin/env bash
# One prepared run that proves the CUDA paths and fills the README's GPU table; see tools/gpu_check.py.
#   bash tools/gpu_check.sh OUT_DIR [--dry-run]
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: bash tools/gpu_check.sh OUT_DIR [--dry-run]" >&2; exit 2; }
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
exec python3 tools/gpu_check.py "$@"
