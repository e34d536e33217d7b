#!/usr/bin/env bash
# Create .venv-export: the torch + diffusers environment that regenerates the
# ONNX fixtures in models/ (see tools/export_fixtures.py and models/README.md).
#
#   bash tools/setup_export_env.sh
#   .venv-export/bin/python tools/export_fixtures.py --out models
#
# Env vars: PYTHON (default python3), VENV (default .venv-export),
# TORCH_INDEX_URL (optional: a CPU-only PyTorch wheel index; default is PyPI,
# whose Linux wheel is the CUDA build and pulls the nvidia-* packages; see
# tools/requirements-export.txt for why --no-deps does not work).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv-export}"

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    "$VENV/bin/pip" install "torch==2.15.0" --index-url "$TORCH_INDEX_URL"
fi
"$VENV/bin/pip" install -r tools/requirements-export.txt
"$VENV/bin/python" - <<'PY'
import torch, diffusers, onnx, onnxruntime, numpy
print("torch", torch.__version__, "| diffusers", diffusers.__version__, "| onnx", onnx.__version__,
      "| onnxruntime", onnxruntime.__version__, "| numpy", numpy.__version__)
assert float(torch.ones(2).sum()) == 2.0
PY
