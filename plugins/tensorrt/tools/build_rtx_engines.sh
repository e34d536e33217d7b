#!/usr/bin/env bash
# Builds TensorRT-RTX engines with the dfc plugins: every rank*.onnx of a plan folder becomes
# rank*.plan beside it, or (no argument) the three one-node probe models under
# plugins/tensorrt/build/probe. Needs tools/setup_cuda.sh and tools/build_plugins.sh first.
#   plugins/tensorrt/tools/build_rtx_engines.sh [plan_dir] [--fp16]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${DFC_CACHE:-$HOME/.cache/dfc}"
# shellcheck disable=SC1091
source "$cache/env.sh"
lib="$here/build/libdfc_trt_plugins.so"
[ -f "$lib" ] || { echo "build_rtx_engines: $lib missing (run tools/build_plugins.sh)" >&2; exit 1; }
export LD_LIBRARY_PATH="$DFC_RTX_LD_LIBRARY_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ $# -eq 0 ] || [ "$1" = "--fp16" ]; then
  for op in halo gather stats; do
    "$DFC_PY" "$here/tools/rtx_build.py" probe "$lib" "$here/build/probe" "$op" "$@"
  done
  exit 0
fi
plan="$1"; shift
shopt -s nullglob
models=("$plan"/rank*.onnx)
[ ${#models[@]} -gt 0 ] || { echo "build_rtx_engines: no rank*.onnx in $plan" >&2; exit 1; }
for m in "${models[@]}"; do
  "$DFC_PY" "$here/tools/rtx_build.py" build "$lib" "$m" "${m%.onnx}.plan" "$@"
done
