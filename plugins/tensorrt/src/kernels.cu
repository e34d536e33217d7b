#include "kernels.h"

#include <cstdint>

namespace dfc {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 16;

// The widest word (16, 8, 4, 2 or 1 bytes) dividing every row and aligned on every pointer.
int wordBytes(int64_t rowBytes, std::initializer_list<void const*> ptrs) {
    for (int w : {16, 8, 4, 2}) {
        bool ok = rowBytes % w == 0;
        for (void const* p : ptrs) ok = ok && (reinterpret_cast<uintptr_t>(p) % w == 0);
        if (ok) return w;
    }
    return 1;
}

unsigned blocksFor(int64_t n) {
    int64_t b = (n + kThreads - 1) / kThreads;
    if (b < 1) b = 1;
    return static_cast<unsigned>(b > kMaxBlocks ? kMaxBlocks : b);
}

// blockIdx.y: 0 = top rows, 1 = own rows, 2 = bottom rows. Sizes in words.
template <typename W>
__global__ void haloAssemble(W* __restrict__ y, W const* __restrict__ x, W const* __restrict__ above,
    W const* __restrict__ below, int64_t outer, int64_t rows, int64_t rowW, int64_t top, int64_t bottom) {
    int seg = blockIdx.y;
    int64_t segRows = seg == 0 ? top : (seg == 1 ? rows : bottom);
    int64_t firstRow = seg == 0 ? 0 : (seg == 1 ? top : top + rows);
    W const* src = seg == 0 ? above : (seg == 1 ? x : below);
    int64_t per = segRows * rowW;  // words per outer index in this segment
    int64_t total = outer * per;
    int64_t yPer = (top + rows + bottom) * rowW;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        int64_t o = i / per;
        int64_t r = i - o * per;
        y[o * yPer + firstRow * rowW + r] = src != nullptr ? src[i] : W{};
    }
}

// blockIdx.y = band q.
template <typename W>
__global__ void gatherAssemble(W* __restrict__ y, W const* __restrict__ x, W const* __restrict__ board,
    int64_t outer, int64_t rowW, int64_t slotW, GatherParts parts) {
    int q = blockIdx.y;
    int64_t per = parts.part[q] * rowW;
    int64_t total = outer * per;
    int64_t yPer = parts.sum * rowW;
    W const* src = q == parts.own ? x : board + q * slotW;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        int64_t o = i / per;
        int64_t r = i - o * per;
        y[o * yPer + parts.off[q] * rowW + r] = src[i];
    }
}

__global__ void statsCombine(float* __restrict__ g, float const* __restrict__ s, float const* __restrict__ board,
    int64_t len, StatsArgs a) {
    int64_t step = a.pairFallback ? 2 : 1;
    int64_t items = a.pairFallback ? len / 2 : len;
    for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < items;
         t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        float out[2];
        for (int64_t e = 0; e < step; ++e) {
            int64_t k = t * step + e;
            double acc = 0.0;
            for (int j = 0; j < a.n; ++j) acc += a.w[j] * static_cast<double>(board[j * len + k]);
            if (a.useStale) acc += a.deltaScale * (static_cast<double>(s[k]) - static_cast<double>(board[a.own * len + k]));
            out[e] = static_cast<float>(acc);
        }
        if (a.pairFallback) {
            int64_t k = t * 2;
            if (out[1] - out[0] * out[0] < 0.0f) {
                out[0] = s[k];
                out[1] = s[k + 1];
            }
            g[k] = out[0];
            g[k + 1] = out[1];
        } else {
            g[t] = out[0];
        }
    }
}

template <typename W>
cudaError_t haloAs(void* y, void const* x, void const* above, void const* below, int64_t outer, int64_t rows,
    int64_t rowW, int64_t top, int64_t bottom, cudaStream_t stream) {
    int64_t most = outer * rowW * (rows > top ? (rows > bottom ? rows : bottom) : (top > bottom ? top : bottom));
    dim3 grid(blocksFor(most), 3);
    haloAssemble<W><<<grid, kThreads, 0, stream>>>(static_cast<W*>(y), static_cast<W const*>(x),
        static_cast<W const*>(above), static_cast<W const*>(below), outer, rows, rowW, top, bottom);
    return cudaGetLastError();
}

template <typename W>
cudaError_t gatherAs(void* y, void const* x, void const* board, int64_t outer, int64_t rowW, int64_t slotW,
    GatherParts const& parts, cudaStream_t stream) {
    dim3 grid(blocksFor(outer * parts.maxPart * rowW), static_cast<unsigned>(parts.n));
    gatherAssemble<W><<<grid, kThreads, 0, stream>>>(static_cast<W*>(y), static_cast<W const*>(x),
        static_cast<W const*>(board), outer, rowW, slotW, parts);
    return cudaGetLastError();
}

}  // namespace

cudaError_t launchHaloAssemble(void* y, void const* x, void const* above, void const* below, int64_t outer,
    int64_t rows, int64_t rowBytes, int64_t top, int64_t bottom, cudaStream_t stream) {
    if (outer * (rows + top + bottom) * rowBytes == 0) return cudaSuccess;
    switch (wordBytes(rowBytes, {y, x, above, below})) {
    case 16: return haloAs<uint4>(y, x, above, below, outer, rows, rowBytes / 16, top, bottom, stream);
    case 8: return haloAs<uint2>(y, x, above, below, outer, rows, rowBytes / 8, top, bottom, stream);
    case 4: return haloAs<uint32_t>(y, x, above, below, outer, rows, rowBytes / 4, top, bottom, stream);
    case 2: return haloAs<uint16_t>(y, x, above, below, outer, rows, rowBytes / 2, top, bottom, stream);
    default: return haloAs<uint8_t>(y, x, above, below, outer, rows, rowBytes, top, bottom, stream);
    }
}

cudaError_t launchGatherAssemble(void* y, void const* x, void const* board, int64_t outer, int64_t rowBytes,
    int64_t slotBytes, GatherParts const& parts, cudaStream_t stream) {
    if (outer * parts.sum * rowBytes == 0) return cudaSuccess;
    if (parts.n < 1 || parts.n > kMaxRanks) return cudaErrorInvalidValue;
    int w = wordBytes(rowBytes, {y, x, board});
    while (w > 1 && slotBytes % w != 0) w /= 2;
    switch (w) {
    case 16: return gatherAs<uint4>(y, x, board, outer, rowBytes / 16, slotBytes / 16, parts, stream);
    case 8: return gatherAs<uint2>(y, x, board, outer, rowBytes / 8, slotBytes / 8, parts, stream);
    case 4: return gatherAs<uint32_t>(y, x, board, outer, rowBytes / 4, slotBytes / 4, parts, stream);
    case 2: return gatherAs<uint16_t>(y, x, board, outer, rowBytes / 2, slotBytes / 2, parts, stream);
    default: return gatherAs<uint8_t>(y, x, board, outer, rowBytes, slotBytes, parts, stream);
    }
}

cudaError_t launchStatsCombine(float* g, float const* s, float const* board, int64_t len, StatsArgs const& args,
    cudaStream_t stream) {
    if (len == 0) return cudaSuccess;
    if (args.n < 1 || args.n > kMaxRanks) return cudaErrorInvalidValue;
    if (args.pairFallback && len % 2 != 0) return cudaErrorInvalidValue;
    statsCombine<<<blocksFor(args.pairFallback ? len / 2 : len), kThreads, 0, stream>>>(g, s, board, len, args);
    return cudaGetLastError();
}

}  // namespace dfc
