// Cross-check of the host reference (src/host.cpp) against the CPU exchange operators
// (plugins/exchange.rs, the reference semantics): reads the vectors tests/exchange_vectors.rs
// writes, replays every scenario step by step through refHalo / refGather / refStats with the
// plugin context's per-slot bookkeeping (a board per step parity, SlotSteps, stale reads of the
// previous step's board, no publication for `separate` stale statistics), and compares with
// the outputs the Rust operators computed: halo and gather bit-exact, statistics within 1e-6
// relative.
//
//   vectors_check [FILE]   default FILE: exchange_vectors.txt next to this program
// Exit 0 when every record matches (or, with "skipped: ...", when FILE does not exist); 1 with
// the first mismatch named.
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "host.h"
#include "vectors.h"

using namespace dfc;
using vectors::Record;

namespace {

// What the plugin context keeps per slot: each parity's board (every rank's payload of the step
// that last wrote it) and which step that was.
struct SlotState {
    SlotSteps steps;
    std::vector<std::vector<uint32_t>> board[2];
};

template <typename T>
std::vector<T> typed(std::vector<uint32_t> const& v) {
    std::vector<T> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
        if constexpr (sizeof(T) == 4) {
            out[i] = vectors::asFloat(v[i]);
        } else {
            out[i] = static_cast<T>(v[i]);
        }
    }
    return out;
}

template <typename T>
std::vector<uint32_t> bits(std::vector<T> const& v) {
    std::vector<uint32_t> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
        if constexpr (sizeof(T) == 4) {
            out[i] = vectors::bitsOf(v[i]);
        } else {
            out[i] = static_cast<uint32_t>(v[i]);
        }
    }
    return out;
}

// Halo or gather output of rank r from what it sees (bit patterns of the element type).
template <typename T>
std::vector<uint32_t> movedRows(Record const& rec, std::vector<std::vector<uint32_t>> const& seen,
    std::vector<std::vector<int64_t>> const& dims, size_t r) {
    std::vector<std::vector<T>> b;
    for (auto const& v : seen) b.push_back(typed<T>(v));
    int32_t axis = static_cast<int32_t>(rec.attrs.axis);
    return bits(rec.attrs.kind == OpKind::Halo ? refHalo(b, dims, axis, rec.attrs.top, rec.attrs.bottom, r)
                                               : refGather(b, dims, axis));
}

struct Result {
    std::string firstMismatch;
    size_t records = 0, mismatches = 0;
    double worstStatsRel = 0.0;
};

void mismatch(Result& res, std::string const& what) {
    if (res.mismatches++ == 0) res.firstMismatch = what;
}

void checkGroup(vectors::Group const& g, std::map<std::pair<std::string, int64_t>, SlotState>& slots, Result& res) {
    Record const& head = *g.ranks[0];
    size_t n = g.ranks.size();
    uint64_t t = head.step;
    bool stale = head.readsStale();
    GnMode mode = static_cast<GnMode>(head.gn);
    bool isStats = head.attrs.kind == OpKind::Stats;
    // The context's rules: separate stale statistics neither exchange nor publish; sync
    // statistics are always fresh.
    bool exchanges = n > 1 && !(isStats && stale && mode == GnMode::Separate);
    bool useStale = stale && !(isStats && mode == GnMode::Sync);
    SlotState& st = slots[{head.scenario, head.attrs.slot}];
    std::vector<std::vector<uint32_t>> now, prev;
    std::vector<std::vector<int64_t>> dims;
    for (Record const* r : g.ranks) now.push_back(r->x), dims.push_back(r->dims);
    if (exchanges) {
        if (useStale) {
            std::string why = st.steps.canReadStale(t);
            if (!why.empty()) {
                res.records += n;
                mismatch(res, head.where() + ": " + why);
                return;
            }
            prev = st.board[parityOf(t - 1)];
        }
        st.board[parityOf(t)] = now;
        st.steps.wrote(t);
    }
    if (prev.empty()) prev = now;
    std::vector<double> w;
    std::string err = bandWeights(head.rows, w);
    if (!err.empty() || w.size() != n) {
        res.records += n;
        mismatch(res, head.where() + ": band rows: " + (err.empty() ? "not one band per rank" : err));
        return;
    }
    for (size_t r = 0; r < n; ++r) {
        Record const& rec = *g.ranks[r];
        ++res.records;
        if (isStats) {
            std::vector<std::vector<float>> fn, fp;
            for (size_t q = 0; q < n; ++q) fn.push_back(typed<float>(now[q])), fp.push_back(typed<float>(prev[q]));
            bool pairs = !rec.dims.empty() && rec.dims.back() == DFC_STATS_PAIR;
            std::vector<float> want = n == 1 ? fn[r] : refStats(mode, w, fn, fp, r, stale, pairs);
            std::vector<float> got = typed<float>(rec.y);
            bool ok = want.size() == got.size();
            for (size_t k = 0; ok && k < want.size(); ++k) {
                double d = std::fabs(static_cast<double>(got[k]) - static_cast<double>(want[k]));
                double rel = d / std::fmax(std::fabs(static_cast<double>(want[k])), 1e-30);
                if (d > 0.0 && rel > res.worstStatsRel) res.worstStatsRel = rel;
                if (!vectors::statsClose(got[k], want[k])) {
                    char buf[160];
                    std::snprintf(buf, sizeof buf, ": element %zu: host reference %.9g, Rust %.9g (relative %.3g)", k,
                        static_cast<double>(want[k]), static_cast<double>(got[k]), rel);
                    mismatch(res, rec.where() + buf);
                    ok = false;
                }
            }
            if (want.size() != got.size()) mismatch(res, rec.where() + ": output length differs");
            continue;
        }
        std::vector<std::vector<uint32_t>> seen = useStale ? prev : now;
        seen[r] = now[r];
        std::vector<uint32_t> want = rec.dtype == vectors::Dtype::F32 ? movedRows<float>(rec, seen, dims, r)
                                                                      : movedRows<uint16_t>(rec, seen, dims, r);
        if (want.size() != rec.y.size()) {
            mismatch(res, rec.where() + ": output length differs");
            continue;
        }
        for (size_t k = 0; k < want.size(); ++k)
            if (want[k] != rec.y[k]) {
                char buf[120];
                std::snprintf(buf, sizeof buf, ": element %zu: host reference %0*x, Rust %0*x", k,
                    rec.dtype == vectors::Dtype::F32 ? 8 : 4, want[k], rec.dtype == vectors::Dtype::F32 ? 8 : 4,
                    rec.y[k]);
                mismatch(res, rec.where() + buf);
                break;
            }
    }
}

}  // namespace

int main(int argc, char** argv) {
    std::string path;
    if (argc > 1) {
        path = argv[1];
    } else {
        std::string self = argv[0];
        size_t cut = self.find_last_of('/');
        path = (cut == std::string::npos ? std::string(".") : self.substr(0, cut)) + "/exchange_vectors.txt";
    }
    std::vector<Record> recs;
    bool absent = false;
    std::string err = vectors::read(path, recs, absent);
    if (absent) {
        std::printf("skipped: %s not found (cargo test --test exchange_vectors writes it)\n", path.c_str());
        return 0;
    }
    if (!err.empty()) {
        std::fprintf(stderr, "vectors_check: %s\n", err.c_str());
        return 1;
    }
    std::map<vectors::GroupKey, vectors::Group> groups;
    err = vectors::group(recs, groups);
    if (!err.empty()) {
        std::fprintf(stderr, "vectors_check: %s\n", err.c_str());
        return 1;
    }
    // Keys are ordered by scenario, step, call: each slot sees its steps in order.
    std::map<std::pair<std::string, int64_t>, SlotState> slots;
    Result res;
    for (auto const& kv : groups) checkGroup(kv.second, slots, res);
    if (res.mismatches != 0) {
        std::fprintf(stderr, "vectors_check: %zu of %zu records differ; first: %s\n", res.mismatches, res.records,
            res.firstMismatch.c_str());
        return 1;
    }
    std::printf("vectors_check: %zu records match (%zu groups; largest stats relative difference %.3g)\n",
        res.records, groups.size(), res.worstStatsRel);
    return 0;
}
