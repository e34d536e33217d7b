#!/usr/bin/env bash
# Prepares the toolchain of the TensorRT plugin library (plugins/tensorrt), all of it cached in
# ${DFC_CACHE:-$HOME/.cache/dfc}, outside the repository. Idempotent: whatever is already there
# is left alone. Needs only PyPI and crates.io.
#
#   cuda-venv/   nvcc 13 + CUDA runtime headers/libcudart + CCCL + NCCL headers (PyPI wheels),
#                TensorRT-RTX 1.7 libraries and bindings, onnx (for the probe)
#   trtx-sys/    the trtx-sys crate's source: TensorRT 11.4 and TensorRT-RTX 1.3-1.7 headers
#   env.sh       exports DFC_NVCC, DFC_CUOBJDUMP, DFC_CUDA_INCLUDE, DFC_CUDA_LIB, DFC_NCCL_INCLUDE,
#                DFC_NCCL_LIB, DFC_TRT_INCLUDE, DFC_TRTRTX_INCLUDE, DFC_TRTRTX_LIB, DFC_PY,
#                DFC_RTX_LD_LIBRARY_PATH
#   rtx-links/   libtensorrt_rtx.so -> .so.1 (the RTX parser dlopens the unversioned name)
#
# Usage: tools/setup_cuda.sh [--no-rtx]   (--no-rtx: skip the TensorRT-RTX wheels and onnx)
set -euo pipefail
cache="${DFC_CACHE:-$HOME/.cache/dfc}"
python="${PYTHON:-python3}"
venv="$cache/cuda-venv"
want_rtx=1
[ "${1:-}" = "--no-rtx" ] && want_rtx=0

# Pinned versions (bump together).
NVCC_VER=13.0.88
CUDART_VER=13.0.96
CCCL_VER=13.0.85
NCCL_VER=2.28.9
# cuobjdump reads the plugin library's architectures back; PyPI has it from 13.2 on (it reads
# what nvcc 13.0 writes).
CUOBJDUMP_VER=13.2.51
RTX_VER=1.7.1.116
ONNX_VER=1.19.1
TRTX_SYS_VER=0.9.1+rtx1.7

mkdir -p "$cache"
lock="$cache/.setup.lock"
exec 9>"$lock"
flock 9

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/pip" install --quiet --disable-pip-version-check)
have() { "$venv/bin/python" -c "import importlib.metadata as m,sys; sys.exit(0 if m.version('$1')=='$2' else 1)" 2>/dev/null; }

pkgs=()
have nvidia-cuda-nvcc "$NVCC_VER" || pkgs+=("nvidia-cuda-nvcc==$NVCC_VER")
# nvcc's front end (crt) and NVVM must match its ptxas: pin them too.
have nvidia-cuda-crt "$NVCC_VER" || pkgs+=("nvidia-cuda-crt==$NVCC_VER")
have nvidia-nvvm "$NVCC_VER" || pkgs+=("nvidia-nvvm==$NVCC_VER")
have nvidia-cuda-runtime "$CUDART_VER" || pkgs+=("nvidia-cuda-runtime==$CUDART_VER")
have nvidia-cuda-cccl "$CCCL_VER" || pkgs+=("nvidia-cuda-cccl==$CCCL_VER")
have nvidia-nccl-cu13 "$NCCL_VER" || pkgs+=("nvidia-nccl-cu13==$NCCL_VER")
have nvidia-cuda-cuobjdump "$CUOBJDUMP_VER" || pkgs+=("nvidia-cuda-cuobjdump==$CUOBJDUMP_VER")
if [ "$want_rtx" = 1 ]; then
  have tensorrt-rtx-cu13-libs "$RTX_VER" || pkgs+=("tensorrt-rtx-cu13-libs==$RTX_VER")
  have tensorrt-rtx-cu13-bindings "$RTX_VER" || pkgs+=("tensorrt-rtx-cu13-bindings==$RTX_VER")
  have onnx "$ONNX_VER" || pkgs+=("onnx==$ONNX_VER")
fi
if [ "${#pkgs[@]}" -gt 0 ]; then
  echo "setup_cuda: installing ${pkgs[*]} into $venv"
  "${pip[@]}" "${pkgs[@]}"
else
  echo "setup_cuda: $venv is ready"
fi

# TensorRT headers from the trtx-sys crate (crates.io's static download; the .crate is a tar.gz).
hdr="$cache/trtx-sys/trtx-sys-${TRTX_SYS_VER}"
if [ ! -d "$hdr" ]; then
  echo "setup_cuda: fetching trtx-sys $TRTX_SYS_VER"
  mkdir -p "$cache/trtx-sys"
  tmp="$(mktemp "$cache/trtx-sys/dl.XXXXXX")"
  ver_url="${TRTX_SYS_VER//+/%2B}"
  curl -fsSL -o "$tmp" "https://static.crates.io/crates/trtx-sys/trtx-sys-${ver_url}.crate"
  tar -xzf "$tmp" -C "$cache/trtx-sys"
  rm -f "$tmp"
fi

site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cu13="$site/nvidia/cu13"
nvcc_bin="$cu13/bin/nvcc"
cuda_inc="$cu13/include"
cuda_lib="$cu13/lib"
cccl_inc="$cu13/include/cccl"
nccl_inc="$site/nvidia/nccl/include"
nccl_lib="$site/nvidia/nccl/lib"
trt_inc="$hdr/TensorRT-Headers/TRT-Enterprise-11.4"
rtx_inc="$hdr/TensorRT-Headers/TRT-RTX-1.7"
rtx_lib="$site/tensorrt_rtx_libs"
chmod +x "$nvcc_bin" 2>/dev/null || true

# TensorRT-RTX 1.7's ONNX parser dlopen()s the unversioned name libtensorrt_rtx.so when it
# imports a plugin node; the wheel ships only libtensorrt_rtx.so.1 and the parser then calls
# std::terminate. A symlink on LD_LIBRARY_PATH fixes it (plugins/tensorrt/README.md).
rtx_links="$cache/rtx-links"
if [ -e "$rtx_lib/libtensorrt_rtx.so.1" ]; then
  mkdir -p "$rtx_links"
  ln -sf "$rtx_lib/libtensorrt_rtx.so.1" "$rtx_links/libtensorrt_rtx.so"
  ln -sf "$rtx_lib/libtensorrt_onnxparser_rtx.so.1" "$rtx_links/libtensorrt_onnxparser_rtx.so"
fi

cat > "$cache/env.sh" <<ENV
# Written by tools/setup_cuda.sh
export DFC_NVCC="$nvcc_bin"
export DFC_CUOBJDUMP="$cu13/bin/cuobjdump"
export DFC_CUDA_HOME="$(dirname "$(dirname "$nvcc_bin")")"
export DFC_CUDA_INCLUDE="$cuda_inc"
export DFC_CCCL_INCLUDE="$cccl_inc"
export DFC_CUDA_LIB="$cuda_lib"
export DFC_NCCL_INCLUDE="$nccl_inc"
export DFC_NCCL_LIB="$nccl_lib"
export DFC_TRT_INCLUDE="$trt_inc"
export DFC_TRTRTX_INCLUDE="$rtx_inc"
export DFC_TRTRTX_LIB="$rtx_lib"
export DFC_PY="$venv/bin/python"
# Libraries a TensorRT-RTX build with the plugin library needs.
export DFC_RTX_LD_LIBRARY_PATH="$rtx_links:$cuda_lib:$nccl_lib:$rtx_lib"
ENV
cat "$cache/env.sh"
for v in "$nvcc_bin" "$cu13/bin/cuobjdump" "$cuda_inc/cuda_runtime_api.h" "$cuda_lib" "$nccl_inc/nccl.h" "$trt_inc/NvInferPluginBase.h"; do
  if [ -z "$v" ] || [ ! -e "$v" ]; then echo "setup_cuda: missing a toolchain part (see above)" >&2; exit 1; fi
done
