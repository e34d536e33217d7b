#include "context.h"

#include <cstring>
#include <exception>
#include <new>
#include <sstream>

#include "dfc_plugin.h"
#include "kernels.h"

namespace dfc {

namespace {

Status cudaFail(cudaError_t e, char const* what) {
    std::ostringstream os;
    os << what << ": " << cudaGetErrorString(e);
    return {DFC_ERR_CUDA, os.str()};
}

#define DFC_CUDA(call)                                                   \
    do {                                                                 \
        cudaError_t dfc_e_ = (call);                                     \
        if (dfc_e_ != cudaSuccess) return cudaFail(dfc_e_, #call);       \
    } while (0)

std::mutex gRegistryMu;
std::set<Context*> gRegistry;
thread_local Context* tCurrent = nullptr;

std::string opLabel(OpAttrs const& a) {
    std::ostringstream os;
    os << opName(a.kind) << " (slot " << a.slot << ")";
    return os.str();
}

}  // namespace

size_t elementSize(OpKind kind, int32_t dtype) {
    if (dtype == DFC_DTYPE_F32) return 4;
    if (kind == OpKind::Stats) return 0;
    if (dtype == DFC_DTYPE_F16 || dtype == DFC_DTYPE_BF16) return 2;
    return 0;
}

Context::Context(int32_t rank, int32_t size, std::vector<int64_t> rows, GnMode gn, std::set<uint32_t> alwaysFresh)
    : rank_(rank), size_(size), rows_(std::move(rows)), gn_(gn), alwaysFresh_(std::move(alwaysFresh)) {}

Status Context::init(std::unique_ptr<Transport> transport) {
    std::string err = bandWeights(rows_, weights_);
    if (!err.empty()) return {DFC_ERR_INVALID, err};
    if (static_cast<int32_t>(weights_.size()) != size_) return {DFC_ERR_INVALID, "rows must hold size+1 entries"};
    if (size_ > kMaxRanks) return {DFC_ERR_INVALID, "groups of more than 64 ranks are not supported"};
    transport_ = std::move(transport);
    DFC_CUDA(cudaGetDevice(&device_));
    // The communication stream: non-blocking (no implicit order with the legacy stream) and at
    // the device's highest priority, so that a collective's kernels are scheduled ahead of the
    // compute kernels they overlap with in stale steps (a late collective delays every rank).
    int leastPriority = 0, greatestPriority = 0;
    DFC_CUDA(cudaDeviceGetStreamPriorityRange(&leastPriority, &greatestPriority));
    DFC_CUDA(cudaStreamCreateWithPriority(&comm_, cudaStreamNonBlocking, greatestPriority));
    return {};
}

Context::~Context() {
    if (comm_ != nullptr) cudaStreamSynchronize(comm_);
    for (auto& kv : slots_) {
        SlotBuffers& sb = kv.second;
        for (int p = 0; p < 2; ++p) {
            if (sb.send[p]) cudaFree(sb.send[p]);
            if (sb.board[p]) cudaFree(sb.board[p]);
            for (cudaEvent_t ev : {sb.ready[p], sb.done[p], sb.read[p]})
                if (ev) cudaEventDestroy(ev);
        }
    }
    if (comm_ != nullptr) cudaStreamDestroy(comm_);
}

Status Context::setStep(uint64_t step, bool stale) {
    if (abort_.raised()) return {DFC_ERR_ABORTED, "context aborted: " + abort_.reason()};
    std::lock_guard<std::mutex> lk(mu_);
    step_ = step;
    stale_ = stale && step > 0;
    return {};
}

Status Context::synchronize() {
    DFC_CUDA(cudaStreamSynchronize(comm_));
    return {};
}

void Context::abort(std::string const& reason) {
    // The reason is published before the flag (AbortFlag::raise); only the first abort reaches
    // the transport.
    if (abort_.raise(reason) && transport_) transport_->abort(abort_.reason());
}

Status Context::slotFor(OpAttrs const& a, size_t sendBytes, size_t boardBytes, cudaStream_t stream,
    SlotBuffers*& out) {
    auto it = slots_.find(a.slot);
    if (it != slots_.end()) {
        SlotBuffers& sb = it->second;
        if (sb.kind != a.kind || sb.sendBytes != sendBytes || sb.boardBytes != boardBytes) {
            std::ostringstream os;
            os << opLabel(a) << ": the slot was first used by " << opName(sb.kind) << " with " << sb.sendBytes
               << "/" << sb.boardBytes << " bytes, now " << sendBytes << "/" << boardBytes
               << " (slots must be unique per graph)";
            return {DFC_ERR_STATE, os.str()};
        }
        out = &sb;
        return {};
    }
    // First use: allocate, and clear on the enqueue stream (never the legacy default stream,
    // which is not ordered with the non-blocking communication stream). The clears precede, in
    // `stream` order, the `ready` event every collective on these buffers waits for. Cleared send
    // buffers are what makes the padding of unequal all-gathers zero: packs write only the band.
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    DFC_CUDA(cudaStreamIsCapturing(stream, &capture));
    if (capture != cudaStreamCaptureStatusNone)
        return {DFC_ERR_STATE, opLabel(a) + ": first use of the slot inside CUDA graph capture (its buffers would "
                                            "be cleared at every replay): run one step uncaptured first"};
    SlotBuffers sb;
    sb.kind = a.kind;
    sb.sendBytes = sendBytes;
    sb.boardBytes = boardBytes;
    Status st;
    auto fail = [&](cudaError_t e, char const* what) {
        st = cudaFail(e, what);
        cudaStreamSynchronize(stream);  // clears already enqueued on the buffers freed below
        for (int p = 0; p < 2; ++p) {
            if (sb.send[p]) cudaFree(sb.send[p]);
            if (sb.board[p]) cudaFree(sb.board[p]);
            for (cudaEvent_t ev : {sb.ready[p], sb.done[p], sb.read[p]})
                if (ev) cudaEventDestroy(ev);
        }
        return st;
    };
    for (int p = 0; p < 2; ++p) {
        cudaError_t e = cudaMalloc(&sb.send[p], sendBytes > 0 ? sendBytes : 1);
        if (e != cudaSuccess) return fail(e, "cudaMalloc (send buffer)");
        e = cudaMalloc(&sb.board[p], boardBytes > 0 ? boardBytes : 1);
        if (e != cudaSuccess) return fail(e, "cudaMalloc (receive buffer)");
        e = cudaMemsetAsync(sb.send[p], 0, sendBytes > 0 ? sendBytes : 1, stream);
        if (e != cudaSuccess) return fail(e, "cudaMemsetAsync (send buffer)");
        e = cudaMemsetAsync(sb.board[p], 0, boardBytes > 0 ? boardBytes : 1, stream);
        if (e != cudaSuccess) return fail(e, "cudaMemsetAsync (receive buffer)");
        for (cudaEvent_t* ev : {&sb.ready[p], &sb.done[p], &sb.read[p]}) {
            e = cudaEventCreateWithFlags(ev, cudaEventDisableTiming);
            if (e != cudaSuccess) return fail(e, "cudaEventCreate");
        }
    }
    out = &slots_.emplace(a.slot, sb).first->second;
    return {};
}

template <typename Pack, typename Collective>
Status Context::publish(SlotBuffers& sb, int p, cudaStream_t stream, Pack pack, Collective collective) {
    // send[p] was last read by the collective two exchanges ago; board[p] was last read by the
    // compute stream after that collective (fresh) or in the following step (stale).
    DFC_CUDA(cudaStreamWaitEvent(stream, sb.done[p], 0));
    Status st = pack(sb.send[p]);
    if (!st.ok()) return st;
    DFC_CUDA(cudaEventRecord(sb.ready[p], stream));
    DFC_CUDA(cudaStreamWaitEvent(comm_, sb.ready[p], 0));
    DFC_CUDA(cudaStreamWaitEvent(comm_, sb.read[p], 0));
    st = collective(sb.send[p], sb.board[p]);
    if (!st.ok()) return st;
    DFC_CUDA(cudaEventRecord(sb.done[p], comm_));
    return {};
}

Status Context::run(OpAttrs const& a, std::vector<int64_t> const& dims, int32_t dtype, void const* x, void* y,
    cudaStream_t stream) {
    if (abort_.raised()) return {DFC_ERR_ABORTED, opLabel(a) + ": context aborted: " + abort_.reason()};
    std::vector<int64_t> outDims;
    std::string err = outputShape(a, dims, outDims);
    if (!err.empty()) return {DFC_ERR_INVALID, err};
    size_t es = elementSize(a.kind, dtype);
    if (es == 0) return {DFC_ERR_INVALID, opLabel(a) + ": unsupported element type"};
    std::lock_guard<std::mutex> lk(mu_);
    bool stale = stale_ && alwaysFresh_.count(static_cast<uint32_t>(a.slot)) == 0;
    Status st;
    switch (a.kind) {
    case OpKind::Halo: st = runHalo(a, dims, es, x, y, stream, stale); break;
    case OpKind::Gather: st = runGather(a, dims, es, x, y, stream, stale); break;
    case OpKind::Stats: st = runStats(a, dims, x, y, stream, stale); break;
    }
    if (!st.ok() && st.message.find(opName(a.kind)) == std::string::npos) st.message = opLabel(a) + ": " + st.message;
    return st;
}

Status Context::runHalo(OpAttrs const& a, std::vector<int64_t> const& dims, size_t es, void const* x, void* y,
    cudaStream_t stream, bool stale) {
    AxisRule rule;
    axisRule(a, static_cast<int32_t>(dims.size()), rule);
    HaloLayout L;
    L.s = splitAt(dims, rule.axis);
    L.top = a.top;
    L.bottom = a.bottom;
    int64_t rowB = L.s.inner * static_cast<int64_t>(es);
    if (size_ == 1 || L.sendCount() == 0) {
        cudaError_t e = launchHaloAssemble(y, x, nullptr, nullptr, L.s.outer, L.s.rows, rowB, L.top, L.bottom, stream);
        return e == cudaSuccess ? Status{} : cudaFail(e, "halo kernel");
    }
    size_t toUp = static_cast<size_t>(L.sendToUp()) * es, toDown = static_cast<size_t>(L.sendToDown()) * es;
    size_t fromUp = static_cast<size_t>(L.recvFromUp()) * es, fromDown = static_cast<size_t>(L.recvFromDown()) * es;
    SlotBuffers* sb = nullptr;
    Status st = slotFor(a, toUp + toDown, fromUp + fromDown, stream, sb);
    if (!st.ok()) return st;
    uint64_t step = step_;
    int p = parityOf(step);
    if (stale) {
        std::string why = sb->steps.canReadStale(step);
        if (!why.empty()) return {DFC_ERR_STATE, why};
    }
    auto pack = [&](void* send) -> Status {
        char* s = static_cast<char*>(send);
        char const* xb = static_cast<char const*>(x);
        size_t pitch = static_cast<size_t>(L.s.rows * rowB);
        if (toUp > 0)  // first `bottom` rows, for band r-1
            DFC_CUDA(cudaMemcpy2DAsync(s, static_cast<size_t>(L.bottom * rowB), xb, pitch,
                static_cast<size_t>(L.bottom * rowB), static_cast<size_t>(L.s.outer), cudaMemcpyDeviceToDevice, stream));
        if (toDown > 0)  // last `top` rows, for band r+1
            DFC_CUDA(cudaMemcpy2DAsync(s + toUp, static_cast<size_t>(L.top * rowB),
                xb + (L.s.rows - L.top) * rowB, pitch, static_cast<size_t>(L.top * rowB),
                static_cast<size_t>(L.s.outer), cudaMemcpyDeviceToDevice, stream));
        return {};
    };
    auto collective = [&](void* send, void* board) -> Status {
        PeerOp ops[2];
        int32_t n = 0;
        char* s = static_cast<char*>(send);
        char* b = static_cast<char*>(board);
        if (rank_ > 0) ops[n++] = PeerOp{rank_ - 1, s, toUp, b, fromUp};
        if (rank_ + 1 < size_) ops[n++] = PeerOp{rank_ + 1, s + toUp, toDown, b + fromUp, fromDown};
        return transport_->exchange(ops, n, comm_);
    };
    st = publish(*sb, p, stream, pack, collective);
    if (!st.ok()) return st;
    sb->steps.wrote(step);
    int q = stale ? 1 - p : p;
    DFC_CUDA(cudaStreamWaitEvent(stream, sb->done[q], 0));
    char const* board = static_cast<char const*>(sb->board[q]);
    cudaError_t e = launchHaloAssemble(y, x, rank_ > 0 ? board : nullptr, rank_ + 1 < size_ ? board + fromUp : nullptr,
        L.s.outer, L.s.rows, rowB, L.top, L.bottom, stream);
    if (e != cudaSuccess) return cudaFail(e, "halo kernel");
    DFC_CUDA(cudaEventRecord(sb->read[q], stream));
    return {};
}

// Publishes this rank's `bytes` of `x` into slot `a`'s send buffer of this step's parity and
// all-gathers `slotBytes` per rank into its board (the collective on the comm stream). With
// `stale`, first checks that the previous step's board may be read. Returns the slot and parity.
Status Context::allGatherSlot(OpAttrs const& a, void const* x, size_t bytes, size_t slotBytes,
    cudaStream_t stream, bool stale, SlotBuffers*& sb, int& p) {
    Status st = slotFor(a, slotBytes, slotBytes * static_cast<size_t>(size_), stream, sb);
    if (!st.ok()) return st;
    uint64_t step = step_;
    p = parityOf(step);
    if (stale) {
        std::string why = sb->steps.canReadStale(step);
        if (!why.empty()) return {DFC_ERR_STATE, why};
    }
    auto pack = [&](void* send) -> Status {
        DFC_CUDA(cudaMemcpyAsync(send, x, bytes, cudaMemcpyDeviceToDevice, stream));
        return {};
    };
    auto collective = [&](void* send, void* board) -> Status {
        return transport_->allGather(send, board, slotBytes, comm_);
    };
    st = publish(*sb, p, stream, pack, collective);
    if (!st.ok()) return st;
    sb->steps.wrote(step);
    return {};
}

Status Context::runGather(OpAttrs const& a, std::vector<int64_t> const& dims, size_t es, void const* x, void* y,
    cudaStream_t stream, bool stale) {
    AxisRule rule;
    axisRule(a, static_cast<int32_t>(dims.size()), rule);
    if (static_cast<int32_t>(a.parts.size()) != size_) {
        std::ostringstream os;
        os << "parts has " << a.parts.size() << " entries, the group " << size_ << " bands";
        return {DFC_ERR_INVALID, os.str()};
    }
    GatherLayout L;
    L.s = splitAt(dims, rule.axis);
    L.parts = a.parts;
    if (L.s.rows != a.parts[static_cast<size_t>(rank_)]) {
        std::ostringstream os;
        os << "band " << rank_ << " has " << L.s.rows << " rows on axis " << rule.axis << ", parts says "
           << a.parts[static_cast<size_t>(rank_)];
        return {DFC_ERR_INVALID, os.str()};
    }
    int64_t rowB = L.s.inner * static_cast<int64_t>(es);
    size_t own = static_cast<size_t>(L.s.outer * L.s.rows * rowB);
    if (size_ == 1) {
        DFC_CUDA(cudaMemcpyAsync(y, x, own, cudaMemcpyDeviceToDevice, stream));
        return {};
    }
    size_t slotB = static_cast<size_t>(L.slotCount()) * es;
    SlotBuffers* sb = nullptr;
    int p = 0;
    Status st = allGatherSlot(a, x, own, slotB, stream, stale, sb, p);
    if (!st.ok()) return st;
    GatherParts gp;
    gp.n = size_;
    gp.own = rank_;
    for (size_t j = 0; j < L.parts.size(); ++j) {
        gp.part[j] = L.parts[j];
        gp.off[j] = L.offset(j);
    }
    gp.maxPart = L.maxPart();
    gp.sum = L.sumParts();
    int q = stale ? 1 - p : p;
    DFC_CUDA(cudaStreamWaitEvent(stream, sb->done[q], 0));
    cudaError_t e = launchGatherAssemble(y, x, sb->board[q], L.s.outer, rowB, static_cast<int64_t>(slotB), gp, stream);
    if (e != cudaSuccess) return cudaFail(e, "gather kernel");
    DFC_CUDA(cudaEventRecord(sb->read[q], stream));
    return {};
}

Status Context::runStats(OpAttrs const& a, std::vector<int64_t> const& dims, void const* x, void* y,
    cudaStream_t stream, bool stale) {
    int64_t len = 1;
    for (int64_t d : dims) len *= d;
    size_t bytes = static_cast<size_t>(len) * sizeof(float);
    if (size_ == 1 || (stale && gn_ == GnMode::Separate)) {
        DFC_CUDA(cudaMemcpyAsync(y, x, bytes, cudaMemcpyDeviceToDevice, stream));
        return {};
    }
    bool useStale = stale && gn_ != GnMode::Sync;
    SlotBuffers* sb = nullptr;
    int p = 0;
    Status st = allGatherSlot(a, x, bytes, bytes, stream, useStale, sb, p);
    if (!st.ok()) return st;
    StatsArgs args;
    args.n = size_;
    args.own = rank_;
    for (int32_t j = 0; j < size_; ++j) args.w[j] = weights_[static_cast<size_t>(j)];
    args.useStale = useStale ? 1 : 0;
    args.deltaScale = gn_ == GnMode::Corrected ? 1.0 : weights_[static_cast<size_t>(rank_)];
    args.pairFallback = useStale && gn_ == GnMode::Corrected && !dims.empty() && dims.back() == DFC_STATS_PAIR;
    int q = useStale ? 1 - p : p;
    DFC_CUDA(cudaStreamWaitEvent(stream, sb->done[q], 0));
    cudaError_t e = launchStatsCombine(static_cast<float*>(y), static_cast<float const*>(x),
        static_cast<float const*>(sb->board[q]), len, args, stream);
    if (e != cudaSuccess) return cudaFail(e, "stats kernel");
    DFC_CUDA(cudaEventRecord(sb->read[q], stream));
    return {};
}

Context* currentContext(std::string& why, bool* noneExists) {
    std::lock_guard<std::mutex> lk(gRegistryMu);
    if (noneExists != nullptr) *noneExists = gRegistry.empty();
    if (tCurrent != nullptr && gRegistry.count(tCurrent) != 0) return tCurrent;
    if (gRegistry.size() == 1) return *gRegistry.begin();
    why = gRegistry.empty() ? "no dfc context exists in this process (dfc_context_create)"
                            : "several dfc contexts exist and none is current on this thread (dfc_context_set_step)";
    return nullptr;
}

void makeCurrent(Context* ctx) { tCurrent = ctx; }

Status runLocalOnly(OpAttrs const& a, std::vector<int64_t> const& dims, int32_t dtype, void const* x, void* y,
    cudaStream_t stream) {
    size_t es = elementSize(a.kind, dtype);
    if (es == 0) return {DFC_ERR_INVALID, opLabel(a) + ": unsupported element type"};
    LocalOnly L;
    std::string err = localOnlyLayout(a, dims, L);
    if (!err.empty()) return {DFC_ERR_INVALID, err};
    size_t rowB = static_cast<size_t>(L.s.inner) * es;
    size_t pitch = static_cast<size_t>(L.outRows) * rowB;
    size_t height = static_cast<size_t>(L.s.outer);
    if (pitch == 0 || height == 0) return {};
    char* yb = static_cast<char*>(y);
    if (L.offset > 0)  // zero rows above x's
        DFC_CUDA(cudaMemset2DAsync(yb, pitch, 0, static_cast<size_t>(L.offset) * rowB, height, stream));
    if (L.rowsAfter() > 0)  // zero rows below
        DFC_CUDA(cudaMemset2DAsync(yb + static_cast<size_t>(L.offset + L.s.rows) * rowB, pitch, 0,
            static_cast<size_t>(L.rowsAfter()) * rowB, height, stream));
    size_t width = static_cast<size_t>(L.s.rows) * rowB;
    if (width > 0)
        DFC_CUDA(cudaMemcpy2DAsync(yb + static_cast<size_t>(L.offset) * rowB, pitch, x, width, width, height,
            cudaMemcpyDeviceToDevice, stream));
    return {};
}

}  // namespace dfc

// ------------------------------------------------------------------------------------ C ABI

struct dfc_context {
    dfc::Context* impl;
};
struct dfc_local_group {
    dfc::LocalGroup* impl;
};

namespace {
thread_local std::string tLastError;

// Neither overload throws: the message is swapped in, or copied under a catch (an
// unrecordable message leaves "").
int fail(int code, std::string msg) noexcept {
    tLastError.swap(msg);
    return code;
}
int fail(int code, char const* msg) noexcept {
    try {
        tLastError = msg;
    } catch (...) {
        tLastError.clear();
    }
    return code;
}
int report(dfc::Status const& st) { return st.ok() ? DFC_OK : fail(st.code, st.message); }

// Every C entry point runs its body in here: no exception crosses the ABI.
template <typename F>
int guarded(F f) noexcept {
    try {
        return f();
    } catch (std::bad_alloc const&) {
        return fail(DFC_ERR_INVALID, "out of host memory");
    } catch (std::exception const& e) {
        return fail(DFC_ERR_INVALID, e.what());
    } catch (...) {
        return fail(DFC_ERR_INVALID, "unknown C++ exception");
    }
}
}  // namespace

extern "C" {

uint32_t dfc_abi_version(void) { return DFC_ABI_VERSION; }

const char* dfc_last_error(void) { return tLastError.c_str(); }

int dfc_local_group_create(int32_t size, uint32_t timeout_ms, dfc_local_group** out) {
    return guarded([&]() -> int {
        if (out == nullptr || size < 1 || size > dfc::kMaxRanks) return fail(DFC_ERR_INVALID, "bad local group size");
        *out = new dfc_local_group{dfc::localGroupCreate(size, timeout_ms)};
        return DFC_OK;
    });
}

int dfc_local_group_destroy(dfc_local_group* group) {
    return guarded([&]() -> int {
        if (group == nullptr) return fail(DFC_ERR_INVALID, "null group");
        dfc::localGroupDestroy(group->impl);
        delete group;
        return DFC_OK;
    });
}

int dfc_context_create(int32_t rank, int32_t size, const int64_t* rows, int32_t gn_mode, const uint32_t* always_fresh,
    int32_t n_always_fresh, int32_t transport, void* transport_handle, dfc_context** out) {
    return guarded([&]() -> int {
        if (out == nullptr) return fail(DFC_ERR_INVALID, "null output handle");
        *out = nullptr;
        if (size < 1 || size > dfc::kMaxRanks || rank < 0 || rank >= size)
            return fail(DFC_ERR_INVALID, "rank must be in [0, size) and size in [1, 64]");
        if (rows == nullptr) return fail(DFC_ERR_INVALID, "rows is null");
        if (!dfc::gnModeValid(gn_mode)) return fail(DFC_ERR_INVALID, "unknown GroupNorm mode");
        if (n_always_fresh < 0 || (n_always_fresh > 0 && always_fresh == nullptr))
            return fail(DFC_ERR_INVALID, "bad always-fresh slot list");
        std::vector<int64_t> r(rows, rows + size + 1);
        std::set<uint32_t> fresh(always_fresh, always_fresh + n_always_fresh);
        dfc::Status st;
        std::unique_ptr<dfc::Transport> t;
        if (transport == DFC_TRANSPORT_NCCL) {
            t = dfc::makeNcclTransport(transport_handle, rank, size, st);
        } else if (transport == DFC_TRANSPORT_LOCAL) {
            auto* g = static_cast<dfc_local_group*>(transport_handle);
            if (g == nullptr) return fail(DFC_ERR_INVALID, "null local group");
            if (dfc::localGroupSize(g->impl) != size) return fail(DFC_ERR_INVALID, "local group size differs from size");
            t = dfc::makeLocalTransport(g->impl, rank, st);
        } else {
            return fail(DFC_ERR_INVALID, "unknown transport");
        }
        if (!t) return report(st);
        auto ctx = std::make_unique<dfc::Context>(rank, size, std::move(r), static_cast<dfc::GnMode>(gn_mode), fresh);
        st = ctx->init(std::move(t));
        if (!st.ok()) return report(st);
        dfc::Context* impl = ctx.release();
        {
            std::lock_guard<std::mutex> lk(dfc::gRegistryMu);
            dfc::gRegistry.insert(impl);
        }
        *out = new dfc_context{impl};
        return DFC_OK;
    });
}

int dfc_context_set_step(dfc_context* ctx, uint64_t step, int32_t stale) {
    return guarded([&]() -> int {
        if (ctx == nullptr) return fail(DFC_ERR_INVALID, "null context");
        dfc::makeCurrent(ctx->impl);
        return report(ctx->impl->setStep(step, stale != 0));
    });
}

int dfc_context_make_current(dfc_context* ctx) {
    if (ctx == nullptr) return fail(DFC_ERR_INVALID, "null context");
    dfc::makeCurrent(ctx->impl);
    return DFC_OK;
}

int dfc_context_synchronize(dfc_context* ctx) {
    return guarded([&]() -> int {
        if (ctx == nullptr) return fail(DFC_ERR_INVALID, "null context");
        return report(ctx->impl->synchronize());
    });
}

int dfc_context_abort(dfc_context* ctx, const char* reason) {
    return guarded([&]() -> int {
        if (ctx == nullptr) return fail(DFC_ERR_INVALID, "null context");
        ctx->impl->abort(reason != nullptr ? reason : "aborted by the runtime");
        return DFC_OK;
    });
}

int dfc_context_destroy(dfc_context* ctx) {
    return guarded([&]() -> int {
        if (ctx == nullptr) return fail(DFC_ERR_INVALID, "null context");
        {
            std::lock_guard<std::mutex> lk(dfc::gRegistryMu);
            dfc::gRegistry.erase(ctx->impl);
        }
        if (dfc::tCurrent == ctx->impl) dfc::tCurrent = nullptr;
        delete ctx->impl;
        delete ctx;
        return DFC_OK;
    });
}

int dfc_op_enqueue(dfc_context* ctx, const char* op, int64_t slot, int64_t axis, int64_t top, int64_t bottom,
    const int64_t* parts, int32_t n_parts, const int64_t* dims, int32_t n_dims, int32_t dtype, const void* x, void* y,
    void* stream) {
    return guarded([&]() -> int {
        if (ctx == nullptr) return fail(DFC_ERR_INVALID, "null context");
        dfc::OpAttrs a;
        if (!dfc::opKindFromName(op, a.kind)) return fail(DFC_ERR_INVALID, "unknown operator");
        if (n_dims < 0 || (n_dims > 0 && dims == nullptr) || n_parts < 0 || (n_parts > 0 && parts == nullptr))
            return fail(DFC_ERR_INVALID, "bad dims or parts");
        a.slot = slot;
        a.axis = axis;
        a.top = top;
        a.bottom = bottom;
        a.parts.assign(parts, parts + n_parts);
        std::vector<int64_t> d(dims, dims + n_dims);
        return report(ctx->impl->run(a, d, dtype, x, y, static_cast<cudaStream_t>(stream)));
    });
}

}  // extern "C"
