#!/usr/bin/env bash
# The GPU path on a CUDA machine, in one go (meant to finish in under 8 minutes on one data-centre GPU):
#   1. the tests marked `cuda` (tests/test_cuda.py): device choice, bf16 autocast with channels_last for every
#      model, precision auto and fp16 with its scaler resumed, training images in pinned host memory, two runs
#      sharing one GPU, torchrun with nccl;
#   2. benchmarks/gpu_epoch.py: s/epoch and images/s of each model at 28 and 224 px, fp32, bf16 and fp16, as a table.
# Usage: bash benchmarks/gpu_check.sh            (PYTHON=... to use another interpreter than .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch ' + torch.__version__ + ' sees no CUDA GPU here')"
"$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py
"$PY" benchmarks/gpu_epoch.py
