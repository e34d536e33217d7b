// Host-side logic of the dfc exchange plugins, free of CUDA and TensorRT: operator attributes
// and their serialization, output-shape rules, row geometry, step parity bookkeeping and the
// host reference of the three operators (DESIGN §3). The TensorRT plugins, the C ABI, the
// dfc_trt_shapes tool, the host tests and the GPU harness all use these same functions.
#ifndef DFC_TRT_HOST_H
#define DFC_TRT_HOST_H

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "dfc_contract.h"

namespace dfc {

enum class OpKind : int32_t { Halo = 0, Stats = 1, Gather = 2 };

// Operator name (the TensorRT plugin name) of a kind.
char const* opName(OpKind kind);
// The kind whose operator name is `name`; false when none is.
bool opKindFromName(char const* name, OpKind& kind);

// GroupNorm statistics modes (DFC_GN_*).
enum class GnMode : int32_t {
    Corrected = DFC_GN_CORRECTED,
    Stale = DFC_GN_STALE,
    Sync = DFC_GN_SYNC,
    Separate = DFC_GN_SEPARATE,
};
bool gnModeValid(int32_t mode);

// The attributes of one exchange node. `axis` may be negative (counted from the end) until
// normalized against a rank.
struct OpAttrs {
    OpKind kind = OpKind::Halo;
    int64_t slot = -1;
    int64_t axis = 0;
    int64_t top = 0;
    int64_t bottom = 0;
    std::vector<int64_t> parts;

    bool operator==(OpAttrs const& o) const;
};

// Checks the attributes alone (not against a shape): "" when valid, else the reason.
std::string validateAttrs(OpAttrs const& a);

// ---- serialization (TensorRT PluginFieldCollection, without TensorRT types) ----

enum class FieldType : int32_t { Int32 = 0, Int64 = 1, Other = 2 };

// One named field: its values widened to int64 (Int32/Int64 fields) and the type it had.
struct Field {
    std::string name;
    FieldType type = FieldType::Int32;
    std::vector<int64_t> values;
};

// The fields that serialize `a` (slot, axis, top, bottom for halo; slot, axis, parts for
// gather; slot for stats), all Int32 like the ONNX parser hands them.
std::vector<Field> attrsToFields(OpAttrs const& a);
// Parses fields into attributes of `kind`. Unknown names are ignored (the ONNX parser passes
// e.g. plugin_version); a missing required field, a value that does not fit Int32 semantics or
// a non-integer type is an error. Returns "" on success.
std::string attrsFromFields(OpKind kind, std::vector<Field> const& fields, OpAttrs& out);

// ---- shapes ----

// How an operator changes the extent of its axis: y[axis] = x[axis] + add (Halo),
// y[axis] = value (Gather: sum of parts) or unchanged (Stats). Shared by the host shape
// function and the TensorRT IExprBuilder code.
struct AxisRule {
    enum Kind { Same, Add, Set } kind = Same;
    int32_t axis = 0;  // normalized
    int64_t value = 0;
};
// The rule for an input of `rank` dims; "" on success.
std::string axisRule(OpAttrs const& a, int32_t rank, AxisRule& rule);
// Output dims for input dims `in`; "" on success. Checks what can be checked without knowing
// the caller's band (e.g. halo rows not larger than the band, gather input on axis equal to
// one of the parts).
std::string outputShape(OpAttrs const& a, std::vector<int64_t> const& in, std::vector<int64_t>& out);

// ---- geometry ----

// A tensor seen as [outer, rows, inner] around an axis.
struct Split {
    int64_t outer = 1, rows = 0, inner = 1;
};
Split splitAt(std::vector<int64_t> const& dims, int32_t axis);

// Byte layout of one rank's halo payloads, element counts:
//  send = [first `bottom` rows of each outer (to band r-1) | last `top` rows (to band r+1)]
//  recv = [last `top` rows of band r-1 | first `bottom` rows of band r+1]
struct HaloLayout {
    Split s;
    int64_t top = 0, bottom = 0;
    int64_t sendToUp() const { return s.outer * bottom * s.inner; }
    int64_t sendToDown() const { return s.outer * top * s.inner; }
    int64_t recvFromUp() const { return s.outer * top * s.inner; }
    int64_t recvFromDown() const { return s.outer * bottom * s.inner; }
    int64_t sendCount() const { return sendToUp() + sendToDown(); }
    int64_t recvCount() const { return recvFromUp() + recvFromDown(); }
    int64_t outRows() const { return s.rows + top + bottom; }
};

// Gather with unequal parts, padded all-gather: every rank sends max(parts) rows per outer.
struct GatherLayout {
    Split s;  // s.rows = this band's part
    std::vector<int64_t> parts;
    int64_t maxPart() const;
    int64_t sumParts() const;
    int64_t offset(size_t band) const;                        // first row of `band` in y
    int64_t slotCount() const { return s.outer * maxPart() * s.inner; }  // per rank
};

// Band weights w_j = (rows[j+1]-rows[j]) / H; "" on success (rows increasing, rows[0] = 0).
std::string bandWeights(std::vector<int64_t> const& rows, std::vector<double>& w);

// ---- step bookkeeping ----

// Which board (double buffer) a step writes and which one a stale step reads.
inline int parityOf(uint64_t step) { return static_cast<int>(step & 1u); }
struct SlotSteps {
    int64_t boardStep[2] = {-1, -1};  // the step whose exchange filled each parity's board
    // Whether a stale read at `step` finds the previous step's data: "" if so.
    std::string canReadStale(uint64_t step) const;
    void wrote(uint64_t step) { boardStep[parityOf(step)] = static_cast<int64_t>(step); }
};

// ---- local-only output (no dfc context in the process) ----

// What an operator writes when it runs without any dfc context (TensorRT timing a plugin while
// it builds an engine): no communication, deterministic, the output's shape. y is x's rows placed
// at `offset` on the axis, zero elsewhere:
//  halo:   offset = top: zero rows above and below the band (a rank alone in its group);
//  gather: offset = the offset of the band whose part x's rows equal (the first such band when
//          several parts are equal), every other band's rows zero;
//  stats:  y = x, the local statistics (s = [1, numel, 1], offset 0).
struct LocalOnly {
    Split s;              // x around the axis
    int64_t outRows = 0;  // y's extent on the axis
    int64_t offset = 0;   // first row of x's rows in y
    int64_t band = -1;    // gather: the band x is placed as; else -1
    int64_t rowsAfter() const { return outRows - offset - s.rows; }  // zero rows below x's
};
// The layout for input dims `dims`; "" on success (the same checks as outputShape).
std::string localOnlyLayout(OpAttrs const& a, std::vector<int64_t> const& dims, LocalOnly& out);
// Host reference of the local-only output (the plugin writes exactly this).
template <typename T>
std::vector<T> refLocalOnly(LocalOnly const& L, std::vector<T> const& x);

// ---- abort ----

// A context's abort state, shared by the thread that aborts (e.g. the runtime's watchdog) and
// the threads that enqueue. Take-once: the first raise() claims the abort, writes the reason and
// only then publishes the flag (release); readers acquire the flag before they read the reason,
// so whoever sees the abort sees its whole reason, and the reason never changes afterwards.
// Only the winning raise() returns true (its caller aborts the transport, once).
class AbortFlag {
public:
    bool raise(std::string const& reason) noexcept;
    bool raised() const noexcept { return state_.load(std::memory_order_acquire) == kRaised; }
    // The reason once raised() (else ""); may throw std::bad_alloc like any string copy.
    std::string reason() const { return raised() ? reason_ : std::string(); }

private:
    enum : int { kLive = 0, kClaimed = 1, kRaised = 2 };
    std::atomic<int> state_{kLive};
    std::string reason_;  // written once, by the claiming raise(), before kRaised is published
};

// ---- host reference (every band's data in one process) ----

// y of band r: [last top rows of band r-1 | x_r | first bottom rows of band r+1], zeros at the
// edges. bands[q] has dims with bands' own extents on `axis`; `above`/`below` give the bands
// whose rows to use (the neighbour data may come from another step for stale tests).
template <typename T>
std::vector<T> refHalo(std::vector<std::vector<T>> const& bands, std::vector<std::vector<int64_t>> const& dims,
    int32_t axis, int64_t top, int64_t bottom, size_t r);

template <typename T>
std::vector<T> refGather(std::vector<std::vector<T>> const& bands, std::vector<std::vector<int64_t>> const& dims,
    int32_t axis);

// DfcStatsAllReduce of band i. `now[j]` = s_j(t); `prev[j]` = s_j(t-1) (used by the stale
// forms only). `stale`: the step reads stale context for this slot. `pairs`: the last axis has
// DFC_STATS_PAIR entries. Fresh: f64 sum of w_j*s_j(t) in band order.
std::vector<float> refStats(GnMode mode, std::vector<double> const& w, std::vector<std::vector<float>> const& now,
    std::vector<std::vector<float>> const& prev, size_t i, bool stale, bool pairs);

}  // namespace dfc

#endif
