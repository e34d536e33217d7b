#!/usr/bin/env bash
# Builds the TensorRT plugin library (plugins/tensorrt), the TensorRT shims that `dfc build`
# loads (libdfc_trt_shim.so for TensorRT 11, libdfc_trt_shim_rtx.so for TensorRT-RTX 1.7) and
# the tools, with warnings as errors,
# for every GPU a TensorRT serves (sm_75 and sm_86/89/120 for TensorRT-RTX's RTX cards, sm_80/90/100
# for full TensorRT's datacenter GPUs) plus PTX of the newest for later GPUs, checks the
# architectures with cuobjdump, then runs the host tests, the host reference against the CPU
# operators' vectors (vectors_check; skips until `cargo test --test exchange_vectors` wrote them)
# and the GPU harness (which skips without a CUDA device). Outputs go to plugins/tensorrt/build/.
# Exit status != 0 when anything fails to compile or a test fails.
#
#   tools/build_plugins.sh            set up the toolchain if needed (tools/setup_cuda.sh), build, test
#   DFC_BUILD_JOBS=N                  parallel compile jobs (default 1)
#   DFC_PLUGIN_ARCHS="75 80 86 89 90 100 120"   SM architectures (PTX for the last)
# Run it under `flock /tmp/dfc-build.lock` on shared machines.
set -euo pipefail
start=$(date +%s)
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${DFC_CACHE:-$HOME/.cache/dfc}"
src="$root/plugins/tensorrt"
out="$src/build"
jobs="${DFC_BUILD_JOBS:-1}"
archs="${DFC_PLUGIN_ARCHS:-75 80 86 89 90 100 120}"

if [ ! -f "$cache/env.sh" ] || ! bash -c "source '$cache/env.sh' && test -x \"\$DFC_NVCC\" && test -x \"\${DFC_CUOBJDUMP:-}\" && test -f \"\$DFC_TRT_INCLUDE/NvInferRuntime.h\""; then
  "$root/tools/setup_cuda.sh"
fi
# shellcheck disable=SC1091
source "$cache/env.sh"
mkdir -p "$out/obj"

gencode=()
for a in $archs; do gencode+=(-gencode "arch=compute_$a,code=sm_$a"); done
newest="${archs##* }"
gencode+=(-gencode "arch=compute_$newest,code=compute_$newest")
cxx=(g++ -std=c++17 -O2 -fPIC -Wall -Wextra -Werror -I"$src/include" -I"$src/src")
sys_cuda=(-isystem "$DFC_CUDA_INCLUDE")
nvcc=("$DFC_NVCC" -std=c++17 -O2 -Werror all-warnings -Xcompiler -fPIC,-Wall,-Wextra,-Werror
  "${gencode[@]}" -I"$src/include" -I"$src/src")
links=(-L"$DFC_CUDA_LIB" -L"$DFC_NCCL_LIB" -l:libcudart.so.13 -l:libnccl.so.2)

# Rebuild an object only when its source or any header changed, or the architectures did.
headers=("$src"/include/*.h "$src"/src/*.h)
if [ "$(cat "$out/.archs" 2>/dev/null)" != "$archs" ]; then
  rm -f "$out"/obj/* "$out"/*.so "$out"/dfc_gpu_harness
  echo "$archs" > "$out/.archs"
fi
stale() { # stale <output> <inputs...>
  local o="$1"; shift
  [ -f "$o" ] || return 0
  local f
  for f in "$@" "${headers[@]}"; do [ "$f" -nt "$o" ] && return 0; done
  return 1
}
pids=()
run() { # run <output> <inputs> -- <command...>   (up to $jobs at a time)
  local o="$1"; shift
  local ins=()
  while [ "$1" != "--" ]; do ins+=("$1"); shift; done
  shift
  if stale "$o" "${ins[@]}"; then
    echo "  build $(basename "$o")"
    "$@" &
    pids+=($!)
    if [ "${#pids[@]}" -ge "$jobs" ]; then wait_all; fi
  fi
}
failed=0
wait_all() {
  local p
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  pids=()
  if [ "$failed" != 0 ]; then echo "build_plugins: compile failed" >&2; exit 1; fi
}

o="$out/obj"
run "$o/host.o" "$src/src/host.cpp" -- "${cxx[@]}" -c "$src/src/host.cpp" -o "$o/host.o"
run "$o/transport.o" "$src/src/transport.cpp" -- "${cxx[@]}" "${sys_cuda[@]}" -isystem "$DFC_NCCL_INCLUDE" \
  -c "$src/src/transport.cpp" -o "$o/transport.o"
run "$o/context.o" "$src/src/context.cpp" -- "${cxx[@]}" "${sys_cuda[@]}" -isystem "$DFC_NCCL_INCLUDE" \
  -c "$src/src/context.cpp" -o "$o/context.o"
run "$o/plugins.o" "$src/src/plugins.cpp" -- "${cxx[@]}" "${sys_cuda[@]}" -isystem "$DFC_TRT_INCLUDE" \
  -c "$src/src/plugins.cpp" -o "$o/plugins.o"
run "$o/kernels.o" "$src/src/kernels.cu" -- "${nvcc[@]}" -c "$src/src/kernels.cu" -o "$o/kernels.o"
run "$out/host_tests" "$src/tests/host_tests.cpp" "$src/src/host.cpp" -- \
  "${cxx[@]}" "$src/tests/host_tests.cpp" "$src/src/host.cpp" -o "$out/host_tests"
run "$out/dfc_trt_shapes" "$src/tools/dfc_trt_shapes.cpp" "$src/src/host.cpp" -- \
  "${cxx[@]}" "$src/tools/dfc_trt_shapes.cpp" "$src/src/host.cpp" -o "$out/dfc_trt_shapes"
# Host reference vs the vectors tests/exchange_vectors.rs writes from the CPU operators.
run "$out/vectors_check" "$src/tests/vectors_check.cpp" "$src/tests/vectors.h" "$src/src/host.cpp" -- \
  "${cxx[@]}" "$src/tests/vectors_check.cpp" "$src/src/host.cpp" -o "$out/vectors_check"
wait_all

lib="$out/libdfc_trt_plugins.so"
objs=("$o/plugins.o" "$o/context.o" "$o/transport.o" "$o/kernels.o" "$o/host.o")
if stale "$lib" "${objs[@]}"; then
  echo "  link $(basename "$lib")"
  g++ -shared -o "$lib" "${objs[@]}" "${links[@]}" -Wl,--no-undefined -Wl,-rpath,'$ORIGIN'
fi
run "$out/dfc_gpu_harness" "$src/tests/gpu_harness.cu" "$src/tests/vectors.h" "$lib" -- "${nvcc[@]}" "$src/tests/gpu_harness.cu" \
  -o "$out/dfc_gpu_harness" -L"$out" -ldfc_trt_plugins -L"$DFC_CUDA_LIB" \
  -Xlinker -rpath-link,"$DFC_NCCL_LIB" -Xlinker -rpath,'$ORIGIN'
wait_all

# The TensorRT shim (dfc_trt.h): no CUDA code, so g++ only; TensorRT is dlopened, never linked.
# TensorRT 11 and TensorRT-RTX 1.7 lay out their classes differently: one build per header set.
shim_src="$root/src/trt/shim/shim.cpp"
shim_cxx=("${cxx[@]}" -I"$root/src/trt/shim" "${sys_cuda[@]}" -fvisibility=hidden)
run "$out/libdfc_trt_shim.so" "$shim_src" -- "${shim_cxx[@]}" -isystem "$DFC_TRT_INCLUDE" -shared \
  "$shim_src" -o "$out/libdfc_trt_shim.so" -ldl -Wl,--no-undefined
run "$out/libdfc_trt_shim_rtx.so" "$shim_src" -- "${shim_cxx[@]}" -DDFC_TRT_RTX -isystem "$DFC_TRTRTX_INCLUDE" \
  -shared "$shim_src" -o "$out/libdfc_trt_shim_rtx.so" -ldl -Wl,--no-undefined
wait_all
for shim in "$out/libdfc_trt_shim.so" "$out/libdfc_trt_shim_rtx.so"; do
  for sym in dfc_trt_abi_version dfc_trt_last_error dfc_trt_open dfc_trt_close dfc_trt_load_plugins \
    dfc_trt_build dfc_trt_engine_load dfc_trt_engine_io dfc_trt_engine_set_address \
    dfc_trt_engine_enqueue dfc_trt_engine_destroy; do
    if ! nm -D --defined-only "$shim" | grep -q " T $sym\$"; then
      echo "build_plugins: $shim does not export $sym" >&2; exit 1
    fi
  done
done

# Exported entry points TensorRT's plugin loader and the runtime look up.
for sym in getCreators setLoggerFinder dfc_context_create dfc_context_set_step dfc_op_enqueue; do
  if ! nm -D --defined-only "$lib" | grep -q " T $sym\$"; then
    echo "build_plugins: $lib does not export $sym" >&2; exit 1
  fi
done

# Machine code for every architecture asked for, and PTX for the newest (cuobjdump reads them).
elf="$("$DFC_CUOBJDUMP" --list-elf "$lib")"
ptx="$("$DFC_CUOBJDUMP" --list-ptx "$lib")"
for a in $archs; do
  if ! grep -q "\.sm_$a\." <<<"$elf"; then
    echo "build_plugins: $lib has no machine code for sm_$a" >&2; exit 1
  fi
done
if ! grep -q "\.sm_$newest\." <<<"$ptx"; then
  echo "build_plugins: $lib has no PTX for compute_$newest" >&2; exit 1
fi
echo "build_plugins: $lib holds sm_${archs// /, sm_} and PTX of compute_$newest"

status=0
"$out/host_tests" || status=1
# Prints "skipped: ..." without the vectors file (cargo test --test exchange_vectors writes it).
"$out/vectors_check" "$out/exchange_vectors.txt" || status=1
printf 'halo 0 1 1 1 | 2 8 3\n' | "$out/dfc_trt_shapes" | grep -qx '2 10 3' || { echo "dfc_trt_shapes: wrong answer" >&2; status=1; }
LD_LIBRARY_PATH="$DFC_CUDA_LIB:$DFC_NCCL_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$out/dfc_gpu_harness" || status=1
if [ -f "$out/exchange_vectors.txt" ]; then
  LD_LIBRARY_PATH="$DFC_CUDA_LIB:$DFC_NCCL_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$out/dfc_gpu_harness" \
    --vectors "$out/exchange_vectors.txt" || status=1
fi
echo "build_plugins: done in $(( $(date +%s) - start )) s (status $status)"
exit $status
