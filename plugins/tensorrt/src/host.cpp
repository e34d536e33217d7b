#include "host.h"

#include <cstring>
#include <limits>
#include <numeric>
#include <sstream>

namespace dfc {

char const* opName(OpKind kind) {
    switch (kind) {
    case OpKind::Halo: return DFC_OP_HALO;
    case OpKind::Stats: return DFC_OP_STATS;
    case OpKind::Gather: return DFC_OP_GATHER;
    }
    return "?";
}

bool opKindFromName(char const* name, OpKind& kind) {
    if (name == nullptr) return false;
    for (OpKind k : {OpKind::Halo, OpKind::Stats, OpKind::Gather}) {
        if (std::strcmp(name, opName(k)) == 0) {
            kind = k;
            return true;
        }
    }
    return false;
}

bool gnModeValid(int32_t mode) {
    return mode == DFC_GN_CORRECTED || mode == DFC_GN_STALE || mode == DFC_GN_SYNC || mode == DFC_GN_SEPARATE;
}

bool OpAttrs::operator==(OpAttrs const& o) const {
    return kind == o.kind && slot == o.slot && axis == o.axis && top == o.top && bottom == o.bottom && parts == o.parts;
}

namespace {
constexpr int64_t kI32Max = std::numeric_limits<int32_t>::max();

std::string describe(OpAttrs const& a) {
    std::ostringstream os;
    os << opName(a.kind) << " (slot " << a.slot << ")";
    return os.str();
}
}  // namespace

std::string validateAttrs(OpAttrs const& a) {
    if (a.slot < 0 || a.slot > kI32Max) return describe(a) + ": slot must be in [0, 2^31)";
    switch (a.kind) {
    case OpKind::Halo:
        if (a.top < 0 || a.bottom < 0) return describe(a) + ": top and bottom must be >= 0";
        if (a.top > kI32Max || a.bottom > kI32Max) return describe(a) + ": top/bottom too large";
        break;
    case OpKind::Gather:
        if (a.parts.empty()) return describe(a) + ": parts is empty";
        for (int64_t p : a.parts)
            if (p <= 0 || p > kI32Max) return describe(a) + ": every part must be > 0";
        break;
    case OpKind::Stats: break;
    }
    return "";
}

std::vector<Field> attrsToFields(OpAttrs const& a) {
    std::vector<Field> f;
    f.push_back({DFC_ATTR_SLOT, FieldType::Int32, {a.slot}});
    if (a.kind == OpKind::Halo) {
        f.push_back({DFC_ATTR_AXIS, FieldType::Int32, {a.axis}});
        f.push_back({DFC_ATTR_TOP, FieldType::Int32, {a.top}});
        f.push_back({DFC_ATTR_BOTTOM, FieldType::Int32, {a.bottom}});
    } else if (a.kind == OpKind::Gather) {
        f.push_back({DFC_ATTR_AXIS, FieldType::Int32, {a.axis}});
        f.push_back({DFC_ATTR_PARTS, FieldType::Int32, a.parts});
    }
    return f;
}

std::string attrsFromFields(OpKind kind, std::vector<Field> const& fields, OpAttrs& out) {
    OpAttrs a;
    a.kind = kind;
    bool haveSlot = false, haveAxis = false, haveTop = false, haveBottom = false, haveParts = false;
    for (Field const& f : fields) {
        auto scalar = [&](int64_t& dst, bool& have) -> std::string {
            if (f.type == FieldType::Other) return "field " + f.name + " is not an integer";
            if (f.values.size() != 1) return "field " + f.name + " must hold one value";
            dst = f.values[0];
            have = true;
            return "";
        };
        std::string err;
        if (f.name == DFC_ATTR_SLOT) {
            err = scalar(a.slot, haveSlot);
        } else if (f.name == DFC_ATTR_AXIS && kind != OpKind::Stats) {
            err = scalar(a.axis, haveAxis);
        } else if (f.name == DFC_ATTR_TOP && kind == OpKind::Halo) {
            err = scalar(a.top, haveTop);
        } else if (f.name == DFC_ATTR_BOTTOM && kind == OpKind::Halo) {
            err = scalar(a.bottom, haveBottom);
        } else if (f.name == DFC_ATTR_PARTS && kind == OpKind::Gather) {
            if (f.type == FieldType::Other) err = "field parts is not an integer list";
            a.parts = f.values;
            haveParts = true;
        }
        if (!err.empty()) return std::string(opName(kind)) + ": " + err;
    }
    auto missing = [&](char const* name) { return std::string(opName(kind)) + ": missing attribute " + name; };
    if (!haveSlot) return missing(DFC_ATTR_SLOT);
    if (kind == OpKind::Halo) {
        if (!haveAxis) return missing(DFC_ATTR_AXIS);
        if (!haveTop) return missing(DFC_ATTR_TOP);
        if (!haveBottom) return missing(DFC_ATTR_BOTTOM);
    } else if (kind == OpKind::Gather) {
        if (!haveAxis) return missing(DFC_ATTR_AXIS);
        if (!haveParts) return missing(DFC_ATTR_PARTS);
    }
    std::string err = validateAttrs(a);
    if (!err.empty()) return err;
    out = a;
    return "";
}

std::string axisRule(OpAttrs const& a, int32_t rank, AxisRule& rule) {
    std::string err = validateAttrs(a);
    if (!err.empty()) return err;
    rule = AxisRule{};
    if (a.kind == OpKind::Stats) return "";
    int64_t axis = a.axis < 0 ? a.axis + rank : a.axis;
    if (axis < 0 || axis >= rank) {
        std::ostringstream os;
        os << describe(a) << ": axis " << a.axis << " is outside an input of rank " << rank;
        return os.str();
    }
    rule.axis = static_cast<int32_t>(axis);
    if (a.kind == OpKind::Halo) {
        rule.kind = AxisRule::Add;
        rule.value = a.top + a.bottom;
    } else {
        rule.kind = AxisRule::Set;
        rule.value = std::accumulate(a.parts.begin(), a.parts.end(), int64_t{0});
    }
    return "";
}

std::string outputShape(OpAttrs const& a, std::vector<int64_t> const& in, std::vector<int64_t>& out) {
    AxisRule rule;
    std::string err = axisRule(a, static_cast<int32_t>(in.size()), rule);
    if (!err.empty()) return err;
    for (int64_t d : in)
        if (d < 0) return describe(a) + ": input dims must be known and >= 0";
    out = in;
    if (rule.kind == AxisRule::Same) return "";
    int64_t rows = in[static_cast<size_t>(rule.axis)];
    std::ostringstream os;
    if (rule.kind == AxisRule::Add) {
        if (a.top > rows || a.bottom > rows) {
            os << describe(a) << ": a halo of " << a.top << " rows above and " << a.bottom
               << " below is larger than the band's " << rows << " rows on axis " << rule.axis
               << "; use fewer ranks";
            return os.str();
        }
        out[static_cast<size_t>(rule.axis)] = rows + rule.value;
    } else {
        bool found = false;
        for (int64_t p : a.parts) found = found || p == rows;
        if (!found) {
            os << describe(a) << ": the input has " << rows << " rows on axis " << rule.axis
               << ", which is none of the parts";
            return os.str();
        }
        out[static_cast<size_t>(rule.axis)] = rule.value;
    }
    return "";
}

Split splitAt(std::vector<int64_t> const& dims, int32_t axis) {
    Split s;
    for (size_t i = 0; i < dims.size(); ++i) {
        if (static_cast<int32_t>(i) < axis) s.outer *= dims[i];
        else if (static_cast<int32_t>(i) == axis) s.rows = dims[i];
        else s.inner *= dims[i];
    }
    return s;
}

int64_t GatherLayout::maxPart() const {
    int64_t m = 0;
    for (int64_t p : parts) m = p > m ? p : m;
    return m;
}
int64_t GatherLayout::sumParts() const { return std::accumulate(parts.begin(), parts.end(), int64_t{0}); }
int64_t GatherLayout::offset(size_t band) const {
    int64_t o = 0;
    for (size_t q = 0; q < band && q < parts.size(); ++q) o += parts[q];
    return o;
}

std::string bandWeights(std::vector<int64_t> const& rows, std::vector<double>& w) {
    if (rows.size() < 2) return "band boundaries need at least 2 entries (rows[0..=n])";
    if (rows[0] != 0) return "band boundaries must start at row 0";
    for (size_t j = 0; j + 1 < rows.size(); ++j)
        if (rows[j + 1] <= rows[j]) return "band boundaries must increase";
    double h = static_cast<double>(rows.back());
    w.assign(rows.size() - 1, 0.0);
    for (size_t j = 0; j + 1 < rows.size(); ++j) w[j] = static_cast<double>(rows[j + 1] - rows[j]) / h;
    return "";
}

std::string localOnlyLayout(OpAttrs const& a, std::vector<int64_t> const& dims, LocalOnly& out) {
    std::vector<int64_t> outDims;
    std::string err = outputShape(a, dims, outDims);
    if (!err.empty()) return err;
    LocalOnly L;
    if (a.kind == OpKind::Stats) {
        int64_t n = 1;
        for (int64_t d : dims) n *= d;
        L.s.rows = n;
        L.outRows = n;
        out = L;
        return "";
    }
    AxisRule rule;
    err = axisRule(a, static_cast<int32_t>(dims.size()), rule);
    if (!err.empty()) return err;
    L.s = splitAt(dims, rule.axis);
    L.outRows = outDims[static_cast<size_t>(rule.axis)];
    if (a.kind == OpKind::Halo) {
        L.offset = a.top;
    } else {
        GatherLayout G;
        G.parts = a.parts;
        for (size_t j = 0; j < a.parts.size() && L.band < 0; ++j)
            if (a.parts[j] == L.s.rows) L.band = static_cast<int64_t>(j);
        if (L.band < 0) return describe(a) + ": the input's rows are none of the parts";  // outputShape checked
        L.offset = G.offset(static_cast<size_t>(L.band));
    }
    out = L;
    return "";
}

template <typename T>
std::vector<T> refLocalOnly(LocalOnly const& L, std::vector<T> const& x) {
    std::vector<T> y(static_cast<size_t>(L.s.outer * L.outRows * L.s.inner), T{});
    int64_t run = L.s.rows * L.s.inner;
    for (int64_t o = 0; o < L.s.outer; ++o)
        for (int64_t k = 0; k < run; ++k)
            y[static_cast<size_t>((o * L.outRows + L.offset) * L.s.inner + k)] = x[static_cast<size_t>(o * run + k)];
    return y;
}

bool AbortFlag::raise(std::string const& reason) noexcept {
    int expected = kLive;
    if (!state_.compare_exchange_strong(expected, kClaimed, std::memory_order_acq_rel)) return false;
    try {
        reason_ = reason.empty() ? std::string("aborted") : reason;
    } catch (...) {
        reason_.clear();  // out of memory: an empty reason, still a published abort
    }
    state_.store(kRaised, std::memory_order_release);
    return true;
}

std::string SlotSteps::canReadStale(uint64_t step) const {
    if (step == 0) return "step 0 has no previous step to read stale data from";
    int64_t want = static_cast<int64_t>(step) - 1;
    if (boardStep[parityOf(step - 1)] != want) {
        std::ostringstream os;
        os << "step " << step << " reads stale data of step " << want << ", but this slot last exchanged at step "
           << (boardStep[0] > boardStep[1] ? boardStep[0] : boardStep[1]);
        return os.str();
    }
    return "";
}

template <typename T>
std::vector<T> refHalo(std::vector<std::vector<T>> const& bands, std::vector<std::vector<int64_t>> const& dims,
    int32_t axis, int64_t top, int64_t bottom, size_t r) {
    Split me = splitAt(dims[r], axis);
    int64_t hy = me.rows + top + bottom;
    std::vector<T> y(static_cast<size_t>(me.outer * hy * me.inner), T{});
    for (int64_t o = 0; o < me.outer; ++o) {
        for (int64_t row = 0; row < hy; ++row) {
            T const* src = nullptr;
            if (row < top) {
                if (r > 0) {
                    Split up = splitAt(dims[r - 1], axis);
                    src = bands[r - 1].data() + (o * up.rows + up.rows - top + row) * up.inner;
                }
            } else if (row < top + me.rows) {
                src = bands[r].data() + (o * me.rows + row - top) * me.inner;
            } else if (r + 1 < bands.size()) {
                Split dn = splitAt(dims[r + 1], axis);
                src = bands[r + 1].data() + (o * dn.rows + row - top - me.rows) * dn.inner;
            }
            if (src != nullptr)
                for (int64_t k = 0; k < me.inner; ++k) y[static_cast<size_t>((o * hy + row) * me.inner + k)] = src[k];
        }
    }
    return y;
}

template <typename T>
std::vector<T> refGather(std::vector<std::vector<T>> const& bands, std::vector<std::vector<int64_t>> const& dims,
    int32_t axis) {
    Split s0 = splitAt(dims[0], axis);
    int64_t total = 0;
    for (auto const& d : dims) total += splitAt(d, axis).rows;
    std::vector<T> y;
    y.reserve(static_cast<size_t>(s0.outer * total * s0.inner));
    for (int64_t o = 0; o < s0.outer; ++o)
        for (size_t q = 0; q < bands.size(); ++q) {
            Split s = splitAt(dims[q], axis);
            auto b = bands[q].begin() + o * s.rows * s.inner;
            y.insert(y.end(), b, b + s.rows * s.inner);
        }
    return y;
}

std::vector<float> refStats(GnMode mode, std::vector<double> const& w, std::vector<std::vector<float>> const& now,
    std::vector<std::vector<float>> const& prev, size_t i, bool stale, bool pairs) {
    size_t n = now.size();
    size_t len = now[i].size();
    std::vector<float> g(len);
    if (stale && mode == GnMode::Separate) return now[i];
    bool useStale = stale && mode != GnMode::Sync;
    std::vector<std::vector<float>> const& base = useStale ? prev : now;
    for (size_t k = 0; k < len; ++k) {
        double acc = 0.0;
        for (size_t j = 0; j < n; ++j) acc += w[j] * static_cast<double>(base[j][k]);
        if (useStale) {
            double delta = static_cast<double>(now[i][k]) - static_cast<double>(prev[i][k]);
            acc += (mode == GnMode::Corrected ? 1.0 : w[i]) * delta;
        }
        g[k] = static_cast<float>(acc);
    }
    if (useStale && mode == GnMode::Corrected && pairs) {
        for (size_t k = 0; k + 1 < len; k += DFC_STATS_PAIR) {
            if (g[k + 1] - g[k] * g[k] < 0.0f) {
                g[k] = now[i][k];
                g[k + 1] = now[i][k + 1];
            }
        }
    }
    return g;
}

template std::vector<float> refHalo<float>(std::vector<std::vector<float>> const&,
    std::vector<std::vector<int64_t>> const&, int32_t, int64_t, int64_t, size_t);
template std::vector<uint16_t> refHalo<uint16_t>(std::vector<std::vector<uint16_t>> const&,
    std::vector<std::vector<int64_t>> const&, int32_t, int64_t, int64_t, size_t);
template std::vector<float> refGather<float>(std::vector<std::vector<float>> const&,
    std::vector<std::vector<int64_t>> const&, int32_t);
template std::vector<uint16_t> refGather<uint16_t>(std::vector<std::vector<uint16_t>> const&,
    std::vector<std::vector<int64_t>> const&, int32_t);
template std::vector<float> refLocalOnly<float>(LocalOnly const&, std::vector<float> const&);
template std::vector<uint16_t> refLocalOnly<uint16_t>(LocalOnly const&, std::vector<uint16_t> const&);

}  // namespace dfc
