// GPU harness of the exchange operators: N simulated ranks on one GPU (single-device
// transport, one host thread and stream per rank) run fresh and stale steps in every GroupNorm
// mode through dfc_op_enqueue (the path TensorRT's enqueue takes), and every output is compared
// with the host reference: halo and gather bit-exact, stats within 1e-6 relative.
//
//   dfc_gpu_harness            correctness (exit 1 on any mismatch)
//   dfc_gpu_harness --time     timings: each kernel, and a stale step's exchange against a
//                              stand-in compute kernel
//   dfc_gpu_harness --vectors FILE
//                              the kernels against the expectations the CPU exchange operators
//                              wrote (tests/exchange_vectors.rs; format in tests/vectors.h): every
//                              scenario's ranks replay their calls step by step through
//                              dfc_op_enqueue; same tolerances
// Without a CUDA device it prints "skipped: no CUDA device" and exits 0 (a skip, not a pass).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime.h>

#include "dfc_plugin.h"
#include "host.h"
#include "kernels.h"
#include "vectors.h"

using namespace dfc;

namespace {

#define CK(call)                                                                              \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess) {                                                              \
            std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            std::exit(2);                                                                     \
        }                                                                                     \
    } while (0)

uint32_t hash(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
    uint32_t h = 2166136261u;
    for (uint32_t v : {a, b, c, d}) h = (h ^ v) * 16777619u, h ^= h >> 13;
    return h;
}

// One exchange op of the test graph.
struct TestOp {
    OpAttrs attrs;
    int32_t dtype;                 // DFC_DTYPE_F32 / F16
    std::vector<int64_t> dims;     // per rank: rows on axis replaced
    int32_t axis = 1;              // the band axis of dims (halo/gather)
};

// Input bytes of `op` on rank r at step t (f32 values, or f16 bit patterns).
std::vector<uint8_t> input(TestOp const& op, std::vector<int64_t> const& dims, size_t idx, int r, int t) {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    size_t es = op.dtype == DFC_DTYPE_F32 ? 4 : 2;
    std::vector<uint8_t> v(static_cast<size_t>(n) * es);
    for (int64_t i = 0; i < n; ++i) {
        uint32_t h = hash(static_cast<uint32_t>(idx), static_cast<uint32_t>(r), static_cast<uint32_t>(t),
            static_cast<uint32_t>(i));
        if (es == 4) {
            float f = op.attrs.kind == OpKind::Stats
                          ? (i % 2 == 0 ? float(h % 1000) / 500.0f - 1.0f : float(h % 1000) / 250.0f)
                          : float(static_cast<int32_t>(h % 200001) - 100000) / 1000.0f;
            std::memcpy(v.data() + i * 4, &f, 4);
        } else {
            uint16_t b = static_cast<uint16_t>(h & 0x7bffu);  // finite f16 bit patterns
            std::memcpy(v.data() + i * 2, &b, 2);
        }
    }
    return v;
}

template <typename T>
std::vector<T> as(std::vector<uint8_t> const& b) {
    std::vector<T> v(b.size() / sizeof(T));
    std::memcpy(v.data(), b.data(), b.size());
    return v;
}

struct Case {
    int n;
    std::vector<int64_t> rows;  // band boundaries (latent level == the test tensors' band axis)
    int32_t gn;
    int steps, warmup;
};

int runCase(Case const& c) {
    int n = c.n;
    std::vector<int64_t> parts;
    for (int q = 0; q < n; ++q) parts.push_back(c.rows[q + 1] - c.rows[q]);
    // The test graph: slot 0 halo of the input (always fresh), f32 and f16 halos, stats with
    // (E[x], E[x^2]) pairs, f32 and f16 gathers with unequal parts.
    std::vector<TestOp> ops(6);
    ops[0].attrs = OpAttrs{OpKind::Halo, 0, 2, 1, 1, {}}, ops[0].dtype = DFC_DTYPE_F32, ops[0].dims = {2, 3, 0, 5}, ops[0].axis = 2;
    ops[1].attrs = OpAttrs{OpKind::Halo, 1, 1, 2, 1, {}}, ops[1].dtype = DFC_DTYPE_F32, ops[1].dims = {2, 0, 7};
    ops[2].attrs = OpAttrs{OpKind::Halo, 2, 1, 1, 0, {}}, ops[2].dtype = DFC_DTYPE_F16, ops[2].dims = {3, 0, 8};
    ops[3].attrs = OpAttrs{OpKind::Stats, 3, 0, 0, 0, {}}, ops[3].dtype = DFC_DTYPE_F32, ops[3].dims = {2, 4, 2};
    ops[4].attrs = OpAttrs{OpKind::Gather, 4, 1, 0, 0, parts}, ops[4].dtype = DFC_DTYPE_F32, ops[4].dims = {2, 0, 6};
    ops[5].attrs = OpAttrs{OpKind::Gather, 5, 1, 0, 0, parts}, ops[5].dtype = DFC_DTYPE_F16, ops[5].dims = {1, 0, 9};
    auto dimsOf = [&](TestOp const& op, int r) {
        std::vector<int64_t> d = op.dims;
        if (op.attrs.kind != OpKind::Stats) d[static_cast<size_t>(op.axis)] = parts[static_cast<size_t>(r)];
        return d;
    };
    auto stale = [&](int t) { return t > c.warmup; };

    dfc_local_group* group = nullptr;
    if (dfc_local_group_create(n, 60000, &group) != DFC_OK) {
        std::fprintf(stderr, "local group: %s\n", dfc_last_error());
        return 1;
    }
    // out[r][t][op]
    std::vector<std::vector<std::vector<std::vector<uint8_t>>>> out(n,
        std::vector<std::vector<std::vector<uint8_t>>>(c.steps, std::vector<std::vector<uint8_t>>(ops.size())));
    std::vector<std::string> errors(n);
    std::vector<std::thread> threads;
    for (int r = 0; r < n; ++r) {
        threads.emplace_back([&, r] {
            CK(cudaSetDevice(0));
            uint32_t fresh[] = {0};
            dfc_context* ctx = nullptr;
            if (dfc_context_create(r, n, c.rows.data(), c.gn, fresh, 1, DFC_TRANSPORT_LOCAL, group, &ctx) != DFC_OK) {
                errors[r] = dfc_last_error();
                return;
            }
            cudaStream_t s;
            CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
            for (int t = 0; t < c.steps && errors[r].empty(); ++t) {
                dfc_context_set_step(ctx, static_cast<uint64_t>(t), stale(t) ? 1 : 0);
                for (size_t k = 0; k < ops.size(); ++k) {
                    TestOp const& op = ops[k];
                    std::vector<int64_t> d = dimsOf(op, r), od;
                    outputShape(op.attrs, d, od);
                    std::vector<uint8_t> x = input(op, d, k, r, t);
                    size_t es = op.dtype == DFC_DTYPE_F32 ? 4 : 2;
                    size_t ob = es;
                    for (int64_t v : od) ob *= static_cast<size_t>(v);
                    void *dx, *dy;
                    CK(cudaMalloc(&dx, x.size()));
                    CK(cudaMalloc(&dy, ob));
                    CK(cudaMemsetAsync(dy, 0xff, ob, s));
                    CK(cudaMemcpyAsync(dx, x.data(), x.size(), cudaMemcpyHostToDevice, s));
                    OpAttrs const& a = op.attrs;
                    int rc = dfc_op_enqueue(ctx, opName(a.kind), a.slot, a.axis, a.top, a.bottom, a.parts.data(),
                        static_cast<int32_t>(a.parts.size()), d.data(), static_cast<int32_t>(d.size()), op.dtype, dx,
                        dy, s);
                    if (rc != DFC_OK) {
                        errors[r] = dfc_last_error();
                        dfc_context_abort(ctx, errors[r].c_str());
                        break;
                    }
                    out[r][t][k].resize(ob);
                    CK(cudaMemcpyAsync(out[r][t][k].data(), dy, ob, cudaMemcpyDeviceToHost, s));
                    CK(cudaStreamSynchronize(s));
                    CK(cudaFree(dx));
                    CK(cudaFree(dy));
                }
            }
            dfc_context_synchronize(ctx);
            CK(cudaStreamDestroy(s));
            dfc_context_destroy(ctx);
        });
    }
    for (auto& th : threads) th.join();
    dfc_local_group_destroy(group);
    int failures = 0;
    for (int r = 0; r < n; ++r)
        if (!errors[r].empty()) {
            std::fprintf(stderr, "rank %d: %s\n", r, errors[r].c_str());
            ++failures;
        }
    if (failures) return failures;

    std::vector<double> w;
    bandWeights(c.rows, w);
    for (int t = 0; t < c.steps; ++t)
        for (size_t k = 0; k < ops.size(); ++k) {
            TestOp const& op = ops[k];
            bool st = stale(t) && op.attrs.slot != 0;
            std::vector<std::vector<uint8_t>> now, prev;
            std::vector<std::vector<int64_t>> dims;
            for (int q = 0; q < n; ++q) {
                dims.push_back(dimsOf(op, q));
                now.push_back(input(op, dims.back(), k, q, t));
                prev.push_back(t > 0 ? input(op, dims.back(), k, q, t - 1) : now.back());
            }
            for (int r = 0; r < n; ++r) {
                // What rank r sees: its own band fresh, the others fresh or of the previous step.
                std::vector<std::vector<uint8_t>> seen = st ? prev : now;
                seen[r] = now[r];
                std::vector<uint8_t> want;
                bool ok = true;
                if (op.attrs.kind == OpKind::Stats) {
                    std::vector<std::vector<float>> fn, fp;
                    for (int q = 0; q < n; ++q) fn.push_back(as<float>(now[q])), fp.push_back(as<float>(prev[q]));
                    std::vector<float> g = refStats(static_cast<GnMode>(c.gn), w, fn, fp, r, st, true);
                    std::vector<float> got = as<float>(out[r][t][k]);
                    for (size_t i = 0; i < g.size(); ++i)
                        ok = ok && std::fabs(got[i] - g[i]) <= 1e-6f * std::fmax(1e-3f, std::fabs(g[i]));
                } else if (op.dtype == DFC_DTYPE_F32) {
                    std::vector<std::vector<float>> b;
                    for (auto const& v : seen) b.push_back(as<float>(v));
                    std::vector<float> y = op.attrs.kind == OpKind::Halo
                                               ? refHalo(b, dims, op.axis, op.attrs.top, op.attrs.bottom, r)
                                               : refGather(b, dims, op.axis);
                    ok = y.size() * 4 == out[r][t][k].size() && std::memcmp(y.data(), out[r][t][k].data(), y.size() * 4) == 0;
                } else {
                    std::vector<std::vector<uint16_t>> b;
                    for (auto const& v : seen) b.push_back(as<uint16_t>(v));
                    std::vector<uint16_t> y = op.attrs.kind == OpKind::Halo
                                                  ? refHalo(b, dims, op.axis, op.attrs.top, op.attrs.bottom, r)
                                                  : refGather(b, dims, op.axis);
                    ok = y.size() * 2 == out[r][t][k].size() && std::memcmp(y.data(), out[r][t][k].data(), y.size() * 2) == 0;
                }
                if (!ok) {
                    ++failures;
                    std::fprintf(stderr, "mismatch: n %d gn %d rank %d step %d %s slot %lld (%s)\n", n, c.gn, r, t,
                        opName(op.attrs.kind), static_cast<long long>(op.attrs.slot), st ? "stale" : "fresh");
                }
            }
        }
    return failures;
}

// --vectors: one scenario of the file, its ranks on threads of one local group.
int runVectorScenario(std::vector<vectors::Record const*> const& recs, size_t& checked) {
    vectors::Record const& head = *recs.front();
    int n = head.n;
    std::vector<uint32_t> fresh;
    std::vector<std::vector<vectors::Record const*>> mine(static_cast<size_t>(n));
    for (vectors::Record const* r : recs) {
        uint32_t slot = static_cast<uint32_t>(r->attrs.slot);
        if (r->freshSlot && std::find(fresh.begin(), fresh.end(), slot) == fresh.end()) fresh.push_back(slot);
        mine[static_cast<size_t>(r->rank)].push_back(r);  // already in step, call order
    }
    dfc_local_group* group = nullptr;
    if (dfc_local_group_create(n, 60000, &group) != DFC_OK) {
        std::fprintf(stderr, "local group: %s\n", dfc_last_error());
        return 1;
    }
    std::vector<std::string> errors(static_cast<size_t>(n)), firstMismatch(static_cast<size_t>(n));
    std::vector<size_t> mismatches(static_cast<size_t>(n), 0), done(static_cast<size_t>(n), 0);
    std::vector<std::thread> threads;
    for (int r = 0; r < n; ++r) {
        threads.emplace_back([&, r] {
            size_t ri = static_cast<size_t>(r);
            CK(cudaSetDevice(0));
            dfc_context* ctx = nullptr;
            if (dfc_context_create(r, n, head.rows.data(), head.gn, fresh.data(), static_cast<int32_t>(fresh.size()),
                    DFC_TRANSPORT_LOCAL, group, &ctx) != DFC_OK) {
                errors[ri] = dfc_last_error();
                return;
            }
            cudaStream_t s;
            CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
            int64_t step = -1;
            for (vectors::Record const* rec : mine[ri]) {
                if (static_cast<int64_t>(rec->step) != step) {
                    step = static_cast<int64_t>(rec->step);
                    if (dfc_context_set_step(ctx, rec->step, rec->stale ? 1 : 0) != DFC_OK) {
                        errors[ri] = rec->where() + ": " + dfc_last_error();
                        dfc_context_abort(ctx, errors[ri].c_str());
                        break;
                    }
                }
                std::vector<uint8_t> x = rec->bytes(rec->x), want = rec->bytes(rec->y), got(want.size());
                void *dx, *dy;
                CK(cudaMalloc(&dx, x.size()));
                CK(cudaMalloc(&dy, want.size()));
                CK(cudaMemsetAsync(dy, 0xff, want.size(), s));
                CK(cudaMemcpyAsync(dx, x.data(), x.size(), cudaMemcpyHostToDevice, s));
                OpAttrs const& a = rec->attrs;
                int32_t dtype = rec->dtype == vectors::Dtype::F32 ? DFC_DTYPE_F32 : DFC_DTYPE_F16;
                int rc = dfc_op_enqueue(ctx, opName(a.kind), a.slot, a.axis, a.top, a.bottom, a.parts.data(),
                    static_cast<int32_t>(a.parts.size()), rec->dims.data(), static_cast<int32_t>(rec->dims.size()),
                    dtype, dx, dy, s);
                if (rc != DFC_OK) {
                    errors[ri] = rec->where() + ": " + dfc_last_error();
                    dfc_context_abort(ctx, errors[ri].c_str());
                    CK(cudaFree(dx));
                    CK(cudaFree(dy));
                    break;
                }
                CK(cudaMemcpyAsync(got.data(), dy, got.size(), cudaMemcpyDeviceToHost, s));
                CK(cudaStreamSynchronize(s));
                CK(cudaFree(dx));
                CK(cudaFree(dy));
                bool ok = true;
                if (a.kind == OpKind::Stats) {
                    std::vector<float> g = as<float>(got), w = as<float>(want);
                    for (size_t k = 0; k < w.size(); ++k) ok = ok && vectors::statsClose(g[k], w[k]);
                } else {
                    ok = std::memcmp(got.data(), want.data(), want.size()) == 0;
                }
                ++done[ri];
                if (!ok && mismatches[ri]++ == 0) firstMismatch[ri] = rec->where();
            }
            dfc_context_synchronize(ctx);
            CK(cudaStreamDestroy(s));
            dfc_context_destroy(ctx);
        });
    }
    for (auto& th : threads) th.join();
    dfc_local_group_destroy(group);
    int failures = 0;
    for (size_t r = 0; r < errors.size(); ++r) {
        checked += done[r];
        if (!errors[r].empty()) {
            std::fprintf(stderr, "rank %zu: %s\n", r, errors[r].c_str());
            ++failures;
        }
        if (mismatches[r] != 0) {
            std::fprintf(stderr, "mismatch: %zu calls, first %s\n", mismatches[r], firstMismatch[r].c_str());
            failures += static_cast<int>(mismatches[r]);
        }
    }
    return failures;
}

int runVectors(std::string const& path) {
    std::vector<vectors::Record> recs;
    bool absent = false;
    std::string err = vectors::read(path, recs, absent);
    if (absent) {
        std::printf("skipped: %s not found (cargo test --test exchange_vectors writes it)\n", path.c_str());
        return 0;
    }
    std::map<vectors::GroupKey, vectors::Group> groups;
    if (err.empty()) err = vectors::group(recs, groups);
    if (!err.empty()) {
        std::fprintf(stderr, "gpu_harness: %s\n", err.c_str());
        return 1;
    }
    std::map<std::string, std::vector<vectors::Record const*>> scenarios;
    for (auto const& kv : groups)
        for (vectors::Record const* r : kv.second.ranks) scenarios[r->scenario].push_back(r);
    int failed = 0;
    size_t checked = 0;
    for (auto const& sc : scenarios) {
        int f = runVectorScenario(sc.second, checked);
        failed += f != 0;
        std::printf("vectors %s: %s\n", sc.first.c_str(), f == 0 ? "ok" : "FAILED");
    }
    std::printf("gpu_harness --vectors: %zu of %zu records checked, %zu scenarios passed, %d failed\n", checked,
        recs.size(), scenarios.size() - static_cast<size_t>(failed), failed);
    return failed == 0 && checked == recs.size() ? 0 : 1;
}

__global__ void standInCompute(float* p, int64_t n, int iters) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        float v = p[i];
        for (int k = 0; k < iters; ++k) v = v * 0.999f + 0.001f;
        p[i] = v;
    }
}

float timeIt(cudaStream_t s, int reps, std::function<void()> const& f) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    f();
    CK(cudaEventRecord(a, s));
    for (int i = 0; i < reps; ++i) f();
    CK(cudaEventRecord(b, s));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return ms * 1000.0f / float(reps);
}

int timing() {
    cudaStream_t s;
    CK(cudaStreamCreate(&s));
    // SDXL-like sizes (fp16): halo of [2, 640, 32, 128] (+1 row each side), gather of K/V
    // [2, 1024, 640] per band over 4 bands, stats [2, 32, 2].
    int64_t outer = 2 * 640, rows = 32, rowB = 128 * 2;
    void *x, *up, *dn, *y;
    CK(cudaMalloc(&x, outer * rows * rowB));
    CK(cudaMalloc(&up, outer * rowB));
    CK(cudaMalloc(&dn, outer * rowB));
    CK(cudaMalloc(&y, outer * (rows + 2) * rowB));
    float us = timeIt(s, 200, [&] { CK(launchHaloAssemble(y, x, up, dn, outer, rows, rowB, 1, 1, s)); });
    std::printf("halo assemble  [2,640,32,128] f16 +1/+1 rows: %8.2f us\n", us);
    GatherParts gp;
    gp.n = 4, gp.own = 1, gp.maxPart = 1024, gp.sum = 4096;
    for (int q = 0; q < 4; ++q) gp.part[q] = 1024, gp.off[q] = 1024 * q;
    int64_t grow = 640 * 2, slot = 2 * 1024 * grow;
    void *gx, *gb, *gy;
    CK(cudaMalloc(&gx, slot));
    CK(cudaMalloc(&gb, 4 * slot));
    CK(cudaMalloc(&gy, 4 * slot));
    us = timeIt(s, 200, [&] { CK(launchGatherAssemble(gy, gx, gb, 2, grow, slot, gp, s)); });
    std::printf("gather assemble [2,4x1024,640] f16:            %8.2f us\n", us);
    StatsArgs sa;
    sa.n = 4, sa.own = 1, sa.useStale = 1, sa.deltaScale = 1.0, sa.pairFallback = 1;
    for (int q = 0; q < 4; ++q) sa.w[q] = 0.25;
    float *ss, *sb, *sg;
    CK(cudaMalloc(&ss, 128 * 4));
    CK(cudaMalloc(&sb, 4 * 128 * 4));
    CK(cudaMalloc(&sg, 128 * 4));
    CK(cudaMemset(sb, 0, 4 * 128 * 4));
    CK(cudaMemset(ss, 0, 128 * 4));
    us = timeIt(s, 200, [&] { CK(launchStatsCombine(sg, ss, sb, 128, sa, s)); });
    std::printf("stats combine [2,32,2] x4 bands:               %8.2f us\n", us);

    // One stale step's exchange (gather, 2 ranks, single-device transport) against compute.
    int n = 2;
    std::vector<int64_t> brows = {0, 1024, 2048};
    dfc_local_group* group = nullptr;
    dfc_local_group_create(n, 60000, &group);
    std::vector<float> compute(n), fresh(n), staleT(n);
    std::vector<std::thread> th;
    for (int r = 0; r < n; ++r)
        th.emplace_back([&, r] {
            CK(cudaSetDevice(0));
            dfc_context* ctx = nullptr;
            if (dfc_context_create(r, n, brows.data(), DFC_GN_CORRECTED, nullptr, 0, DFC_TRANSPORT_LOCAL, group, &ctx))
                return;
            cudaStream_t cs;
            CK(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking));
            int64_t parts[2] = {1024, 1024}, dims[3] = {2, 1024, 640};
            void *kx, *ky;
            float* work;
            CK(cudaMalloc(&kx, 2 * 1024 * 640 * 2));
            CK(cudaMalloc(&ky, 2 * 2048 * 640 * 2));
            CK(cudaMalloc(&work, (1 << 22) * 4));
            CK(cudaMemset(work, 0, (1 << 22) * 4));
            uint64_t step = 0;
            auto one = [&](bool stale, bool exchange) {
                dfc_context_set_step(ctx, step++, stale ? 1 : 0);
                if (exchange)
                    dfc_op_enqueue(ctx, DFC_OP_GATHER, 9, 1, 0, 0, parts, 2, dims, 3, DFC_DTYPE_F16, kx, ky, cs);
                standInCompute<<<1024, 256, 0, cs>>>(work, 1 << 22, 200);
            };
            compute[r] = timeIt(cs, 20, [&] { one(false, false); });
            step = 0;
            fresh[r] = timeIt(cs, 20, [&] { one(false, true); });
            staleT[r] = timeIt(cs, 20, [&] { one(true, true); });
            dfc_context_synchronize(ctx);
            dfc_context_destroy(ctx);
            CK(cudaStreamDestroy(cs));
        });
    for (auto& t : th) t.join();
    dfc_local_group_destroy(group);
    for (int r = 0; r < n; ++r)
        std::printf("rank %d step: compute only %8.2f us | + fresh gather %8.2f us | + stale gather %8.2f us\n", r,
            compute[r], fresh[r], staleT[r]);
    std::printf("(single-device transport: host rendezvous per exchange; NCCL timings need 2 GPUs)\n");
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        std::printf("skipped: no CUDA device\n");
        return 0;
    }
    CK(cudaSetDevice(0));
    if (argc > 1 && std::string(argv[1]) == "--time") return timing();
    if (argc > 1 && std::string(argv[1]) == "--vectors") {
        if (argc != 3) {
            std::fprintf(stderr, "usage: dfc_gpu_harness --vectors FILE\n");
            return 2;
        }
        return runVectors(argv[2]);
    }
    int failures = 0, cases = 0, failedCases = 0;
    std::vector<std::vector<int64_t>> rowSets = {{0, 4, 8}, {0, 3, 5, 8}, {0, 2, 4, 6, 8}, {0, 3, 6, 8, 11}};
    for (auto const& rows : rowSets)
        for (int32_t gn : {DFC_GN_CORRECTED, DFC_GN_STALE, DFC_GN_SYNC, DFC_GN_SEPARATE}) {
            Case c{static_cast<int>(rows.size()) - 1, rows, gn, 7, 2};
            int f = runCase(c);
            ++cases;
            failures += f;
            failedCases += f != 0;
            std::printf("n %d rows %s gn %d: %s\n", c.n,
                [&] { std::string s; for (auto v : rows) s += std::to_string(v) + ","; return s; }().c_str(), gn,
                f == 0 ? "ok" : "FAILED");
        }
    std::printf("gpu_harness: %d passed, %d failed\n", cases - failedCases, failedCases);
    return failures == 0 ? 0 : 1;
}
