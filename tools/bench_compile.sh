#!/usr/bin/env bash
# Compile time and peak memory of `dfc compile MODEL --gpus N` side by side with the minimal
# Python a user would otherwise run on the same file, `onnx.load(path,
# load_external_data=False)` then `onnx.save` (BENCHMARKS.md, "Compile … against Python's load
# + save"). Runs are interleaved; prints every run and the medians (wall seconds, peak RSS).
#
#   tools/bench_compile.sh MODEL [RUNS] -- [dfc compile options…]
#   tools/bench_compile.sh target/sdxl_full/unet.onnx 9 -- --gpus 8 --batch 2 \
#       --height 128 --width 128 --dim sequence=77
#
# Needs a release build (cargo build --release) and .venv (tools/setup.sh) for onnx.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODEL="$1"; shift
RUNS=5
if [[ $# -gt 0 && "$1" != "--" ]]; then RUNS="$1"; shift; fi
[[ "${1:-}" == "--" ]] && shift
DFC=target/release/dfc
PY=.venv/bin/python
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

run() { # label, command…: prints "label seconds kilobytes"
    local label="$1"; shift
    if ! /usr/bin/time -o "$OUT/time" -f "%e %M" "$@" > /dev/null 2> "$OUT/err"; then
        echo "bench_compile: $label failed:" >&2
        cat "$OUT/err" >&2
        exit 1
    fi
    echo "$label $(tail -1 "$OUT/time")"
}

for ((i = 0; i < RUNS; i++)); do
    rm -rf "$OUT/plan" "$OUT/py.onnx"
    run dfc "$DFC" compile "$MODEL" "$@" -o "$OUT/plan"
    run python "$PY" -c 'import onnx, sys
m = onnx.load(sys.argv[1], load_external_data=False)
onnx.save(m, sys.argv[2])' "$MODEL" "$OUT/py.onnx"
done | tee "$OUT/runs.txt"

"$PY" - "$OUT/runs.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
for who in ("dfc", "python"):
    t = [float(r[1]) for r in rows if r[0] == who]
    m = [int(r[2]) for r in rows if r[0] == who]
    print(f"{who:>6}: median {statistics.median(t):.3f} s over {len(t)} runs "
          f"({' / '.join(f'{x:.2f}' for x in t)}), peak RSS median {statistics.median(m) / 1024:.0f} MB")
d = statistics.median(float(r[1]) for r in rows if r[0] == "dfc")
p = statistics.median(float(r[1]) for r in rows if r[0] == "python")
print(f"ratio dfc / python: {d / p:.2f}")
PY
