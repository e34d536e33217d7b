// Device kernels of the exchange operators: byte-exact row movers (halo, gather) and the f64
// combination of statistics. Host-callable launchers; no TensorRT types.
#ifndef DFC_TRT_KERNELS_H
#define DFC_TRT_KERNELS_H

#include <cstdint>

#include <cuda_runtime_api.h>

namespace dfc {

constexpr int kMaxRanks = 64;

// y[o] = [above[o] (top rows) | x[o] (rows) | below[o] (bottom rows)], rows of `rowBytes`;
// a null above/below gives zero rows. above is [outer, top] rows, below [outer, bottom].
cudaError_t launchHaloAssemble(void* y, void const* x, void const* above, void const* below, int64_t outer,
    int64_t rows, int64_t rowBytes, int64_t top, int64_t bottom, cudaStream_t stream);

struct GatherParts {
    int32_t n = 0;
    int32_t own = 0;
    int64_t part[kMaxRanks] = {};
    int64_t off[kMaxRanks] = {};
    int64_t maxPart = 0;
    int64_t sum = 0;
};
// y[o] = concatenation over bands q of band q's [part_q rows], taken from x for q == own and
// else from board + q*slotBytes (band q's x, contiguous [outer, part_q] rows).
cudaError_t launchGatherAssemble(void* y, void const* x, void const* board, int64_t outer, int64_t rowBytes,
    int64_t slotBytes, GatherParts const& parts, cudaStream_t stream);

struct StatsArgs {
    int32_t n = 0;
    int32_t own = 0;
    double w[kMaxRanks] = {};
    int32_t useStale = 0;     // board holds s_j(t-1); add deltaScale*(s - board[own])
    double deltaScale = 0.0;  // 1 (corrected) or w_own (stale)
    int32_t pairFallback = 0; // corrected with (E[x], E[x^2]) pairs on the last axis
};
// g[k] = (float)(sum_j w_j * board[j*len + k] (+ deltaScale*(s[k] - board[own*len + k]))), f64 in
// band order; with pairFallback a pair whose variance estimate is negative becomes s's pair.
cudaError_t launchStatsCombine(float* g, float const* s, float const* board, int64_t len, StatsArgs const& args,
    cudaStream_t stream);

}  // namespace dfc

#endif
