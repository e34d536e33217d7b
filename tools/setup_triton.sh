#!/usr/bin/env bash
# Prepares what the serving tests need, cached in ${DFC_CACHE:-$HOME/.cache/dfc}/triton-venv,
# outside the repository: a real Triton Inference Server 2.51 (the `tritonserver` binary and
# libtritonserver.so inside PyPI's nvidia-pytriton wheel; CPU-only) and its Python clients
# (tritonclient[http,grpc], numpy). Idempotent. Prints the venv's path.
set -euo pipefail
cache="${DFC_CACHE:-$HOME/.cache/dfc}"
venv="$cache/triton-venv"
python="${PYTHON:-python3}"
PYTRITON_VER=0.7.0
TRITONCLIENT_VER=2.51.0
NUMPY_VER=1.26.4

ready() {
  [ -x "$venv/bin/python" ] && "$venv/bin/python" - <<PY 2>/dev/null
import sys
from importlib.metadata import version
ok = version("nvidia-pytriton") == "$PYTRITON_VER" and version("tritonclient") == "$TRITONCLIENT_VER"
sys.exit(0 if ok else 1)
PY
}
if ! ready; then
  echo "setup_triton: installing Triton Inference Server (nvidia-pytriton $PYTRITON_VER) into $venv" >&2
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "nvidia-pytriton==$PYTRITON_VER" "tritonclient[http,grpc]==$TRITONCLIENT_VER" "numpy==$NUMPY_VER"
fi
server=$(ls "$venv"/lib/python3*/site-packages/pytriton/tritonserver/bin/tritonserver 2>/dev/null | head -1)
if [ ! -x "$server" ]; then
  echo "setup_triton: no tritonserver binary in $venv" >&2
  exit 1
fi
echo "$venv"
