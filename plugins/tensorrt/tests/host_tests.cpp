// Host unit tests of the plugin library's CUDA-free logic: serialization round trip, shape
// rules, halo/gather geometry against hand-built tensors, the weighted statistics modes and
// the step parity bookkeeping. Plain checks; exit status 1 on any failure.
#include <atomic>
#include <cmath>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "host.h"

using namespace dfc;

namespace {
int gFailed = 0, gPassed = 0;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (cond) {                                                                   \
            ++gPassed;                                                                \
        } else {                                                                      \
            ++gFailed;                                                                \
            std::fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);      \
        }                                                                             \
    } while (0)

std::vector<int64_t> shape(OpAttrs const& a, std::vector<int64_t> in, std::string* err = nullptr) {
    std::vector<int64_t> out;
    std::string e = outputShape(a, in, out);
    if (err) *err = e;
    return e.empty() ? out : std::vector<int64_t>{};
}

OpAttrs halo(int64_t slot, int64_t axis, int64_t top, int64_t bottom) {
    OpAttrs a;
    a.kind = OpKind::Halo, a.slot = slot, a.axis = axis, a.top = top, a.bottom = bottom;
    return a;
}
OpAttrs gather(int64_t slot, int64_t axis, std::vector<int64_t> parts) {
    OpAttrs a;
    a.kind = OpKind::Gather, a.slot = slot, a.axis = axis, a.parts = std::move(parts);
    return a;
}
OpAttrs stats(int64_t slot) {
    OpAttrs a;
    a.kind = OpKind::Stats, a.slot = slot;
    return a;
}

void testSerialization() {
    for (OpAttrs const& a : {halo(3, 2, 1, 0), gather(7, 1, {4, 3, 4}), stats(11), halo(0, -2, 2, 2)}) {
        OpAttrs b;
        CHECK(attrsFromFields(a.kind, attrsToFields(a), b).empty());
        CHECK(a == b);
    }
    // int64 fields (as another producer may write them) and unknown fields are accepted.
    std::vector<Field> f = {{"slot", FieldType::Int64, {5}}, {"axis", FieldType::Int64, {1}},
        {"top", FieldType::Int32, {1}}, {"bottom", FieldType::Int32, {2}}, {"plugin_version", FieldType::Other, {}}};
    OpAttrs b;
    CHECK(attrsFromFields(OpKind::Halo, f, b).empty());
    CHECK(b == halo(5, 1, 1, 2));
    // Missing and bad fields are errors naming the attribute.
    std::string err = attrsFromFields(OpKind::Halo, {{"slot", FieldType::Int32, {1}}}, b);
    CHECK(err.find("missing attribute axis") != std::string::npos);
    err = attrsFromFields(OpKind::Gather, {{"slot", FieldType::Int32, {1}}, {"axis", FieldType::Int32, {1}},
        {"parts", FieldType::Int32, {4, 0}}}, b);
    CHECK(err.find("part") != std::string::npos);
    err = attrsFromFields(OpKind::Stats, {{"slot", FieldType::Int32, {-1}}}, b);
    CHECK(!err.empty());
    err = attrsFromFields(OpKind::Stats, {{"slot", FieldType::Other, {}}}, b);
    CHECK(err.find("not an integer") != std::string::npos);
}

void testShapes() {
    CHECK((shape(halo(0, 1, 1, 1), {2, 8, 3}) == std::vector<int64_t>{2, 10, 3}));
    CHECK((shape(halo(0, 2, 1, 0), {1, 4, 2, 8}) == std::vector<int64_t>{1, 4, 3, 8}));
    CHECK((shape(halo(0, -2, 0, 2), {1, 4, 2, 8}) == std::vector<int64_t>{1, 4, 4, 8}));
    std::string err;
    CHECK(shape(halo(0, 1, 3, 1), {2, 2, 3}, &err).empty());
    CHECK(err.find("larger than the band") != std::string::npos);
    CHECK(shape(halo(0, 3, 1, 1), {2, 2, 3}, &err).empty());
    CHECK(err.find("outside") != std::string::npos);
    CHECK((shape(gather(1, 1, {4, 3, 4}), {2, 3, 5}) == std::vector<int64_t>{2, 11, 5}));
    CHECK((shape(gather(1, 1, {4, 3, 4}), {2, 4, 5}) == std::vector<int64_t>{2, 11, 5}));
    CHECK(shape(gather(1, 1, {4, 3, 4}), {2, 5, 5}, &err).empty());
    CHECK(err.find("none of the parts") != std::string::npos);
    CHECK((shape(stats(2), {2, 32, 2}) == std::vector<int64_t>{2, 32, 2}));
    AxisRule r;
    CHECK(axisRule(gather(1, -1, {2, 2}), 3, r).empty());
    CHECK(r.kind == AxisRule::Set && r.axis == 2 && r.value == 4);
    CHECK(axisRule(halo(1, 0, 2, 1), 4, r).empty());
    CHECK(r.kind == AxisRule::Add && r.axis == 0 && r.value == 3);
}

// Full tensor [2, H, 3] valued 100*o + 10*row + c (+1000*step), split into bands of `rows`.
std::vector<float> full(int64_t H, int step) {
    std::vector<float> v;
    for (int o = 0; o < 2; ++o)
        for (int64_t r = 0; r < H; ++r)
            for (int c = 0; c < 3; ++c) v.push_back(float(100 * o + 10 * r + c + 1000 * step));
    return v;
}
std::vector<float> bandOf(std::vector<float> const& f, int64_t H, int64_t r0, int64_t r1) {
    std::vector<float> v;
    for (int o = 0; o < 2; ++o)
        v.insert(v.end(), f.begin() + (o * H + r0) * 3, f.begin() + (o * H + r1) * 3);
    return v;
}

void testGeometry() {
    // Unequal bands 3 | 2 | 3 of H = 8.
    std::vector<int64_t> rows = {0, 3, 5, 8};
    int64_t H = 8;
    std::vector<float> f = full(H, 0);
    std::vector<std::vector<float>> bands;
    std::vector<std::vector<int64_t>> dims;
    for (size_t q = 0; q + 1 < rows.size(); ++q) {
        bands.push_back(bandOf(f, H, rows[q], rows[q + 1]));
        dims.push_back({2, rows[q + 1] - rows[q], 3});
    }
    for (int64_t top : {0, 1, 2})
        for (int64_t bottom : {0, 1, 2})
            for (size_t r = 0; r < 3; ++r) {
                std::vector<float> y = refHalo(bands, dims, 1, top, bottom, r);
                // Expected from the full tensor: rows rows[r]-top .. rows[r+1]+bottom, zero outside.
                std::vector<float> want;
                for (int o = 0; o < 2; ++o)
                    for (int64_t row = rows[r] - top; row < rows[r + 1] + bottom; ++row)
                        for (int c = 0; c < 3; ++c)
                            want.push_back(row >= 0 && row < H ? f[static_cast<size_t>((o * H + row) * 3 + c)] : 0.0f);
                CHECK(y == want);
            }
    CHECK(refGather(bands, dims, 1) == f);
    HaloLayout L;
    L.s = splitAt({2, 3, 4, 5}, 1);
    L.top = 1, L.bottom = 2;
    CHECK(L.s.outer == 2 && L.s.rows == 3 && L.s.inner == 20);
    CHECK(L.sendToUp() == 2 * 2 * 20 && L.sendToDown() == 2 * 1 * 20 && L.outRows() == 6);
    CHECK(L.recvFromUp() == L.sendToDown() && L.recvFromDown() == L.sendToUp());
    GatherLayout G;
    G.s = splitAt({2, 3, 5}, 1);
    G.parts = {4, 3, 4};
    CHECK(G.maxPart() == 4 && G.sumParts() == 11 && G.offset(0) == 0 && G.offset(2) == 7);
    CHECK(G.slotCount() == 2 * 4 * 5);
}

bool close(float a, float b) { return std::fabs(a - b) <= 1e-6f * std::fmax(1.0f, std::fabs(b)); }

void testStats() {
    std::vector<double> w;
    CHECK(bandWeights({0, 3, 5, 8}, w).empty());
    CHECK(w.size() == 3 && w[0] == 3.0 / 8 && w[1] == 2.0 / 8 && w[2] == 3.0 / 8);
    CHECK(!bandWeights({1, 3}, w).empty());
    CHECK(!bandWeights({0, 3, 3}, w).empty());
    CHECK(bandWeights({0, 3, 5, 8}, w).empty());
    // Means m_j(t) of bands with weights 3/8, 2/8, 3/8; pairs (m, 100 + m).
    auto m = [](size_t j, int t) { return float(j) + float(t) * (float(j) + 1.0f); };
    auto s = [&](int t) {
        std::vector<std::vector<float>> v;
        for (size_t j = 0; j < 3; ++j) v.push_back({m(j, t), 100.0f + m(j, t)});
        return v;
    };
    auto mean = [&](int t) { return w[0] * m(0, t) + w[1] * m(1, t) + w[2] * m(2, t); };
    for (size_t i = 0; i < 3; ++i) {
        // Fresh: weighted mean.
        for (GnMode mode : {GnMode::Corrected, GnMode::Stale, GnMode::Sync, GnMode::Separate}) {
            std::vector<float> g = refStats(mode, w, s(3), s(2), i, false, true);
            CHECK(close(g[0], float(mean(3))) && close(g[1], float(100.0 + mean(3))));
        }
        double d = double(m(i, 3)) - double(m(i, 2));
        std::vector<float> g = refStats(GnMode::Corrected, w, s(3), s(2), i, true, true);
        CHECK(close(g[0], float(mean(2) + d)) && close(g[1], float(100.0 + mean(2) + d)));
        g = refStats(GnMode::Stale, w, s(3), s(2), i, true, true);
        CHECK(close(g[0], float(mean(2) + w[i] * d)) && close(g[1], float(100.0 + mean(2) + w[i] * d)));
        g = refStats(GnMode::Sync, w, s(3), s(2), i, true, true);
        CHECK(close(g[0], float(mean(3))));
        g = refStats(GnMode::Separate, w, s(3), s(2), i, true, true);
        CHECK(g == s(3)[i]);
    }
    // Equal bands: the weighted mean is the plain mean, identical bits on every band.
    std::vector<double> we;
    CHECK(bandWeights({0, 2, 4}, we).empty());
    std::vector<std::vector<float>> two = {{1.0f, 2.0f}, {3.0f, 5.0f}};
    CHECK((refStats(GnMode::Corrected, we, two, two, 0, false, true) == std::vector<float>{2.0f, 3.5f}));
    CHECK(refStats(GnMode::Corrected, we, two, two, 0, false, true) ==
          refStats(GnMode::Corrected, we, two, two, 1, false, true));
    // Corrected fallback: band 0 moves its mean 0 -> 3 (E[x^2] 10), band 1 stays (0, 0.1):
    // extrapolated (3, 5.05) has variance 5.05 - 9 < 0 -> band 0's own pair.
    std::vector<std::vector<float>> prev = {{0.0f, 10.0f}, {0.0f, 0.1f}}, now = {{3.0f, 10.0f}, {0.0f, 0.1f}};
    CHECK((refStats(GnMode::Corrected, we, now, prev, 0, true, true) == std::vector<float>{3.0f, 10.0f}));
    std::vector<float> g1 = refStats(GnMode::Corrected, we, now, prev, 1, true, true);
    CHECK(close(g1[0], 0.0f) && close(g1[1], 5.05f));
    // Without pairs there is no fallback.
    std::vector<float> g0 = refStats(GnMode::Corrected, we, now, prev, 0, true, false);
    CHECK(close(g0[0], 3.0f) && close(g0[1], 5.05f));
}

void testSteps() {
    SlotSteps st;
    CHECK(!st.canReadStale(0).empty());
    CHECK(!st.canReadStale(1).empty());
    st.wrote(0);
    CHECK(st.canReadStale(1).empty());
    st.wrote(1);
    CHECK(st.canReadStale(2).empty());
    CHECK(!st.canReadStale(4).empty());  // step 3 never exchanged
    CHECK(parityOf(6) == 0 && parityOf(7) == 1);
    st.wrote(2);
    CHECK(st.boardStep[0] == 2 && st.boardStep[1] == 1);
}

void testNames() {
    OpKind k;
    CHECK(opKindFromName(DFC_OP_GATHER, k) && k == OpKind::Gather);
    CHECK(!opKindFromName("DfcOther", k));
    CHECK(std::string(opName(OpKind::Stats)) == "DfcStatsAllReduce");
    CHECK(gnModeValid(DFC_GN_SEPARATE) && !gnModeValid(7));
}

std::vector<float> iota(size_t n, float start) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = start + float(i);
    return v;
}

// The no-context (local-only) output: the shape outputShape gives, x's rows at the band's offset,
// zero elsewhere; halo equals a one-band group's halo, gather a gather whose other bands are zero.
void testLocalOnly() {
    std::string err;
    for (int64_t top : {0, 1, 2})
        for (int64_t bottom : {0, 1, 2}) {
            OpAttrs a = halo(4, 1, top, bottom);
            std::vector<int64_t> dims = {2, 3, 3};
            LocalOnly L;
            CHECK(localOnlyLayout(a, dims, L).empty());
            CHECK(L.offset == top && L.outRows == 3 + top + bottom && L.rowsAfter() == bottom && L.band == -1);
            CHECK(L.s.outer == 2 && L.s.rows == 3 && L.s.inner == 3);
            std::vector<float> x = iota(18, 1.0f);
            std::vector<float> y = refLocalOnly(L, x);
            CHECK(y == refHalo<float>({x}, {dims}, 1, top, bottom, 0));
            std::vector<int64_t> out = shape(a, dims);
            CHECK(static_cast<int64_t>(y.size()) == out[0] * out[1] * out[2]);
        }
    LocalOnly L;
    CHECK(localOnlyLayout(halo(0, -2, 1, 1), {1, 4, 2, 8}, L).empty());
    CHECK(L.s.outer == 4 && L.s.rows == 2 && L.s.inner == 8 && L.outRows == 4 && L.offset == 1);
    // Gather, parts 4 | 3 | 4: a 3-row input is band 1, at row 4 of 11.
    std::vector<int64_t> dims = {2, 3, 5};
    CHECK(localOnlyLayout(gather(1, 1, {4, 3, 4}), dims, L).empty());
    CHECK(L.band == 1 && L.offset == 4 && L.outRows == 11 && L.rowsAfter() == 4);
    std::vector<float> x = iota(30, 1.0f);
    std::vector<float> y = refLocalOnly(L, x);
    std::vector<float> z4(2 * 4 * 5, 0.0f);
    CHECK(y == refGather<float>({z4, x, z4}, {{2, 4, 5}, dims, {2, 4, 5}}, 1));
    // A 4-row input is band 0 (the first band of that part), at row 0; band 2 stays zero.
    CHECK(localOnlyLayout(gather(1, -2, {4, 3, 4}), {2, 4, 5}, L).empty());
    CHECK(L.band == 0 && L.offset == 0 && L.outRows == 11 && L.rowsAfter() == 7);
    CHECK(localOnlyLayout(gather(1, 1, {2, 2, 3}), {1, 3, 1}, L).empty());
    CHECK(L.band == 2 && L.offset == 4 && L.rowsAfter() == 0);
    CHECK((refLocalOnly(L, std::vector<float>{7, 8, 9}) == std::vector<float>{0, 0, 0, 0, 7, 8, 9}));
    err = localOnlyLayout(gather(1, 1, {4, 3, 4}), {2, 5, 5}, L);
    CHECK(err.find("none of the parts") != std::string::npos);
    // Stats: the local statistics as they are.
    CHECK(localOnlyLayout(stats(2), {2, 32, 2}, L).empty());
    CHECK(L.s.outer == 1 && L.s.rows == 128 && L.s.inner == 1 && L.outRows == 128 && L.offset == 0);
    x = iota(128, -3.5f);
    CHECK(refLocalOnly(L, x) == x);
    err = localOnlyLayout(halo(0, 1, 4, 0), {2, 3, 3}, L);
    CHECK(err.find("larger than the band") != std::string::npos);
}

// The context's abort state: a thread that sees the abort reads its whole reason (the reason is
// written before the flag is published); the first abort wins and only it may abort the
// transport.
void testAbort() {
    AbortFlag f;
    CHECK(!f.raised() && f.reason().empty());
    CHECK(f.raise("first"));
    CHECK(!f.raise("second"));  // take-once: the transport is not aborted twice
    CHECK(f.raised() && f.reason() == "first");
    // Readers racing a writer: whoever sees the flag must see the complete reason.
    int torn = 0;
    for (int trial = 0; trial < 2000; ++trial) {
        std::string reason(2048 + trial % 7, char('a' + trial % 26));
        AbortFlag g;
        std::string seen;
        std::atomic<bool> spinning{false};
        std::thread reader([&] {
            spinning = true;
            while (!g.raised()) {
            }
            seen = g.reason();
        });
        while (!spinning) {
        }
        g.raise(reason);
        reader.join();
        if (seen != reason) ++torn;
    }
    if (torn != 0) std::fprintf(stderr, "abort: %d of 2000 readers saw a torn reason\n", torn);
    CHECK(torn == 0);
    // Concurrent aborts: exactly one wins and its reason stays.
    for (int trial = 0; trial < 200; ++trial) {
        AbortFlag h;
        int won[4] = {0, 0, 0, 0};
        std::vector<std::thread> ts;
        for (int t = 0; t < 4; ++t) ts.emplace_back([&, t] { won[t] = h.raise("reason " + std::to_string(t)) ? 1 : 0; });
        for (std::thread& t : ts) t.join();
        int n = 0, who = -1;
        for (int t = 0; t < 4; ++t)
            if (won[t]) n += 1, who = t;
        CHECK(n == 1 && h.reason() == "reason " + std::to_string(who));
    }
}

}  // namespace

int main() {
    testSerialization();
    testShapes();
    testGeometry();
    testStats();
    testSteps();
    testNames();
    testLocalOnly();
    testAbort();
    std::printf("host_tests: %d passed, %d failed\n", gPassed, gFailed);
    return gFailed == 0 ? 0 : 1;
}
