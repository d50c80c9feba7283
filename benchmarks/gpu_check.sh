#!/usr/bin/env bash
# One call on a GPU lease: set up if needed, then run every GPU-only check.
#   bash benchmarks/gpu_check.sh OUT_DIR [extra gpu_check.py args]
# Figures land in OUT_DIR/gpu_check.json; the table is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: benchmarks/gpu_check.sh OUT_DIR}"; shift
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$py" -c "import torch, open_clip, onnx, onnxruntime" 2>/dev/null || {
  echo "gpu_check: torch, open_clip, onnx and onnxruntime must be importable (pip install -e '.[gpu]')" >&2; exit 2; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
exec "$py" benchmarks/gpu_check.py "$out" "$@"
