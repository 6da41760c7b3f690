#!/usr/bin/env bash
# The GPU check (docs/gpu.md): token equality of the torch runner against generate() on the GPU, and its speed
# against the original pipeline and batched generate(), in one JSON file and a table; then in-flight batching
# on the GPU (batch decoding against cohorts apart and merged, build/gpu-check/inflight). Needs PyTorch with CUDA,
# transformers and the shared data beside the checkout; nothing is downloaded (the checkpoints are built here).
#   bash scripts/gpu-check.sh [OUTPUT_JSON]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-build/gpu-check/gpu-check.json}"
PY="${PYTHON:-python3}"
# Dependencies carried in a folder (PYTHONPATH) where the node has no project environment.
if [ -d build/gpu-check-deps ]; then export PYTHONPATH="$PWD/build/gpu-check-deps:$PWD${PYTHONPATH:+:$PYTHONPATH}"; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" -c "import torch, transformers; assert torch.cuda.is_available(), 'torch sees no CUDA device'"
"$PY" -m captioning.cli gpu-check --device cuda --output "$OUT"
exec "$PY" -m captioning.cli bench-inflight --device cuda --output-dir "$(dirname "$OUT")/inflight"
