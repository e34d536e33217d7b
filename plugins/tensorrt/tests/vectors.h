// Reader of the exchange test vectors that tests/exchange_vectors.rs writes from the CPU
// exchange operators (the reference semantics) to plugins/tensorrt/build/exchange_vectors.txt.
// Used by vectors_check (host reference) and dfc_gpu_harness --vectors (CUDA kernels).
//
// Format (text; blank lines and lines starting with '#' are skipped):
//   dfc-exchange-vectors 1
//   rec SCENARIO STEP RANK CALL OP slot S fresh_slot F stale T gn G n N rows R0 .. RN
//       dtype f32|f16 axis A top P bottom B parts K P.. dims K D.. x K W.. y K W..
// one record a line (wrapped here): one call of one rank at one step. CALL is the call's
// position within the rank's step; `stale` is the step's flag (the call reads stale context when
// stale && !fresh_slot); x and y are the input and the expected output as hexadecimal bit
// patterns (f32: 8 digits, f16: 4 digits). The full description is in tests/exchange_vectors.rs.
#ifndef DFC_TRT_TESTS_VECTORS_H
#define DFC_TRT_TESTS_VECTORS_H

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "host.h"

namespace dfc {
namespace vectors {

enum class Dtype { F32, F16 };

struct Record {
    int line = 0;
    std::string scenario;
    uint64_t step = 0;
    int32_t rank = 0;
    int32_t call = 0;
    OpAttrs attrs;
    bool freshSlot = false;
    bool stale = false;
    int32_t gn = 0;
    int32_t n = 0;
    std::vector<int64_t> rows;
    Dtype dtype = Dtype::F32;
    std::vector<int64_t> dims;
    std::vector<uint32_t> x, y;  // bit patterns (f16 in the low 16 bits)

    // Whether this call reads the previous step's context (the plugin context's rule).
    bool readsStale() const { return stale && step > 0 && !freshSlot; }
    std::string where() const {
        std::ostringstream os;
        os << "line " << line << ": " << scenario << " step " << step << " rank " << rank << " call " << call << " "
           << opName(attrs.kind) << " slot " << attrs.slot << (readsStale() ? " (stale)" : " (fresh)");
        return os.str();
    }
    size_t elementSize() const { return dtype == Dtype::F32 ? 4 : 2; }
    // x or y as raw bytes of the element type.
    std::vector<uint8_t> bytes(std::vector<uint32_t> const& v) const {
        std::vector<uint8_t> b(v.size() * elementSize());
        for (size_t i = 0; i < v.size(); ++i) {
            if (dtype == Dtype::F32) {
                std::memcpy(b.data() + 4 * i, &v[i], 4);
            } else {
                uint16_t h = static_cast<uint16_t>(v[i]);
                std::memcpy(b.data() + 2 * i, &h, 2);
            }
        }
        return b;
    }
};

inline float asFloat(uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
inline uint32_t bitsOf(float f) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    return b;
}

// The statistics tolerance: within 1e-6 of the expected value, relative.
inline bool statsClose(float got, float want) {
    double d = static_cast<double>(got) - static_cast<double>(want);
    return (d < 0 ? -d : d) <= 1e-6 * (want < 0 ? -static_cast<double>(want) : static_cast<double>(want));
}

namespace detail {
inline bool expect(std::istringstream& is, char const* word) {
    std::string w;
    return static_cast<bool>(is >> w) && w == word;
}
inline bool ints(std::istringstream& is, std::vector<int64_t>& out) {
    int64_t k = 0;
    if (!(is >> k) || k < 0) return false;
    out.resize(static_cast<size_t>(k));
    for (auto& v : out)
        if (!(is >> v)) return false;
    return true;
}
inline bool words(std::istringstream& is, std::vector<uint32_t>& out, size_t digits) {
    int64_t k = 0;
    if (!(is >> k) || k < 0) return false;
    out.resize(static_cast<size_t>(k));
    for (auto& v : out) {
        std::string w;
        if (!(is >> w) || w.size() != digits) return false;
        char* end = nullptr;
        unsigned long u = std::strtoul(w.c_str(), &end, 16);
        if (end != w.c_str() + w.size()) return false;
        v = static_cast<uint32_t>(u);
    }
    return true;
}
}  // namespace detail

// Reads `path`. Returns "" on success, else why not; `absent` is set when the file does not exist.
inline std::string read(std::string const& path, std::vector<Record>& out, bool& absent) {
    absent = false;
    std::ifstream f(path);
    if (!f) {
        absent = true;
        return path + ": cannot open";
    }
    std::string line;
    int no = 0;
    bool header = false;
    while (std::getline(f, line)) {
        ++no;
        if (line.empty() || line[0] == '#') continue;
        auto bad = [&](char const* what) {
            std::ostringstream os;
            os << path << ":" << no << ": " << what;
            return os.str();
        };
        if (!header) {
            if (line != "dfc-exchange-vectors 1") return bad("expected the header 'dfc-exchange-vectors 1'");
            header = true;
            continue;
        }
        std::istringstream is(line);
        Record r;
        r.line = no;
        std::string op, dtype;
        int fresh = 0, stale = 0;
        int64_t n = 0;
        using detail::expect;
        if (!expect(is, "rec") || !(is >> r.scenario >> r.step >> r.rank >> r.call >> op))
            return bad("expected 'rec SCENARIO STEP RANK CALL OP'");
        if (!opKindFromName(op.c_str(), r.attrs.kind)) return bad("unknown operator");
        if (!expect(is, "slot") || !(is >> r.attrs.slot) || !expect(is, "fresh_slot") || !(is >> fresh) ||
            !expect(is, "stale") || !(is >> stale) || !expect(is, "gn") || !(is >> r.gn) || !expect(is, "n") ||
            !(is >> n) || n <= 0 || n > 64 || !expect(is, "rows"))
            return bad("bad slot/fresh_slot/stale/gn/n");
        r.freshSlot = fresh != 0, r.stale = stale != 0, r.n = static_cast<int32_t>(n);
        r.rows.resize(static_cast<size_t>(n + 1));
        for (auto& v : r.rows)
            if (!(is >> v)) return bad("bad rows");
        if (!gnModeValid(r.gn)) return bad("bad gn mode");
        if (r.rank < 0 || r.rank >= r.n) return bad("rank outside the group");
        if (!expect(is, "dtype") || !(is >> dtype) || (dtype != "f32" && dtype != "f16")) return bad("bad dtype");
        r.dtype = dtype == "f32" ? Dtype::F32 : Dtype::F16;
        if (!expect(is, "axis") || !(is >> r.attrs.axis) || !expect(is, "top") || !(is >> r.attrs.top) ||
            !expect(is, "bottom") || !(is >> r.attrs.bottom) || !expect(is, "parts") || !detail::ints(is, r.attrs.parts) ||
            !expect(is, "dims") || !detail::ints(is, r.dims))
            return bad("bad attributes or dims");
        size_t digits = r.dtype == Dtype::F32 ? 8 : 4;
        if (!expect(is, "x") || !detail::words(is, r.x, digits) || !expect(is, "y") || !detail::words(is, r.y, digits))
            return bad("bad x or y");
        std::string rest;
        if (is >> rest) return bad("trailing data");
        std::string err = validateAttrs(r.attrs);
        if (!err.empty()) return bad(err.c_str());
        int64_t len = 1;
        for (int64_t d : r.dims) len *= d;
        if (len != static_cast<int64_t>(r.x.size())) return bad("x does not have the elements of dims");
        std::vector<int64_t> od;
        err = outputShape(r.attrs, r.dims, od);
        if (!err.empty()) return bad(err.c_str());
        int64_t olen = 1;
        for (int64_t d : od) olen *= d;
        if (olen != static_cast<int64_t>(r.y.size())) return bad("y does not have the elements of the output shape");
        out.push_back(std::move(r));
    }
    if (!header) return path + ": empty (no header)";
    return "";
}

// The calls of one step of one scenario at one call position, one record per rank.
struct Group {
    std::vector<Record const*> ranks;
};
using GroupKey = std::tuple<std::string, uint64_t, int32_t>;  // scenario, step, call

// Groups records by (scenario, step, call), in that order, checking that each group holds one
// record of every rank with the same operator, slot, mode and bands. "" on success.
inline std::string group(std::vector<Record> const& recs, std::map<GroupKey, Group>& out) {
    for (Record const& r : recs) {
        Group& g = out[GroupKey{r.scenario, r.step, r.call}];
        if (g.ranks.empty()) g.ranks.assign(static_cast<size_t>(r.n), nullptr);
        Record const* first = nullptr;
        for (Record const* p : g.ranks) first = first ? first : p;
        if (static_cast<int32_t>(g.ranks.size()) != r.n || g.ranks[static_cast<size_t>(r.rank)] != nullptr)
            return r.where() + ": duplicate rank or a different group size";
        if (first != nullptr &&
            (first->attrs.kind != r.attrs.kind || first->attrs.slot != r.attrs.slot || first->gn != r.gn ||
                first->rows != r.rows || first->stale != r.stale || first->freshSlot != r.freshSlot ||
                first->dtype != r.dtype || first->attrs.axis != r.attrs.axis))
            return r.where() + ": differs from rank " + std::to_string(first->rank) + " of the same call";
        g.ranks[static_cast<size_t>(r.rank)] = &r;
    }
    for (auto const& kv : out)
        for (size_t q = 0; q < kv.second.ranks.size(); ++q)
            if (kv.second.ranks[q] == nullptr) {
                Record const* any = nullptr;
                for (Record const* p : kv.second.ranks) any = any ? any : p;
                return any->where() + ": no record of rank " + std::to_string(q);
            }
    return "";
}

}  // namespace vectors
}  // namespace dfc

#endif
