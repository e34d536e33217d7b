#!/usr/bin/env bash
# Fidelity of patch-parallel sampling on the trained model models/shapes (BENCHMARKS.md,
# "Fidelity"): for each run, `dfc compare` samples the original (one rank) and the plans from
# one seed and writes PSNR/SSIM against the original (JSON) and the side-by-side grid (PNG).
#
#   tools/fidelity.sh [OUT_DIR]          # default docs/fidelity; about 10 min on 2 cores
#
# Runs: displaced / naive / sync at N = 2, 4, 8, and at N = 3 and 6 (unequal bands); the warmup sweep (0, 1, 2, 4) at N = 4 with
# DDIM 25 steps and with DPM-Solver++ 10 steps (the paper's setting); the GroupNorm ablation
# (separate, stale, corrected, sync) at N = 4; the same model with Einsum attention
# (models/shapes_einsum, made by tools/einsum_attention.py) at N = 4 and 8. Every run: 8 images
# (classes of models/shapes/cond8.npz), 64x64, guidance 3, seed 1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${1:-docs/fidelity}"
mkdir -p "$OUT"
cargo build --release --quiet
DFC=target/release/dfc
COMMON=(models/shapes/unet.onnx --batch 16 --height 64 --width 64 --dim sequence=4
        --guidance 3 --seed 1 --inputs models/shapes/cond8.npz)

for n in 2 4 8 3 6; do
    echo "== N = $n: displaced, naive, sync (DDIM 25)"
    "$DFC" compare "${COMMON[@]}" --gpus "$n" --steps 25 --modes displaced,naive,sync \
        --png "$OUT/modes_n$n.png" --json "$OUT/modes_n$n.json"
done

echo "== warmup sweep, N = 4, DDIM 25"
"$DFC" compare "${COMMON[@]}" --gpus 4 --steps 25 --modes displaced --warmup 0,1,2,4 \
    --png "$OUT/warmup_ddim25_n4.png" --json "$OUT/warmup_ddim25_n4.json"

echo "== warmup sweep, N = 4, DPM-Solver++ 10"
"$DFC" compare "${COMMON[@]}" --gpus 4 --steps 10 --scheduler dpmpp2m --modes displaced \
    --warmup 0,1,2,4 --png "$OUT/warmup_dpm10_n4.png" --json "$OUT/warmup_dpm10_n4.json"

echo "== GroupNorm ablation, N = 4, DDIM 25"
"$DFC" compare "${COMMON[@]}" --gpus 4 --steps 25 --modes displaced \
    --gn separate,stale,corrected,sync --png "$OUT/gn_n4.png" --json "$OUT/gn_n4.json"

echo "== Einsum attention (models/shapes_einsum): displaced, naive, sync (DDIM 25)"
for n in 4 8; do
    "$DFC" compare models/shapes_einsum/unet.onnx "${COMMON[@]:1}" --gpus "$n" --steps 25 \
        --modes displaced,naive,sync --png "$OUT/einsum_n$n.png" --json "$OUT/einsum_n$n.json"
done
