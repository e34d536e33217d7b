// The per-rank context behind the C ABI: transport, communication stream, and the persistent
// state of every slot (double-buffered send/receive buffers, events, step bookkeeping).
#ifndef DFC_TRT_CONTEXT_H
#define DFC_TRT_CONTEXT_H

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "host.h"
#include "transport.h"

namespace dfc {

struct SlotBuffers {
    OpKind kind = OpKind::Halo;
    size_t sendBytes = 0;   // per parity
    size_t boardBytes = 0;  // per parity
    void* send[2] = {nullptr, nullptr};
    void* board[2] = {nullptr, nullptr};
    cudaEvent_t ready[2] = {nullptr, nullptr};  // compute: send[p] written
    cudaEvent_t done[2] = {nullptr, nullptr};   // comm: board[p] filled (send[p] free)
    cudaEvent_t read[2] = {nullptr, nullptr};   // compute: board[p] read
    SlotSteps steps;
};

class Context {
public:
    Context(int32_t rank, int32_t size, std::vector<int64_t> rows, GnMode gn, std::set<uint32_t> alwaysFresh);
    ~Context();
    Status init(std::unique_ptr<Transport> transport);

    Status setStep(uint64_t step, bool stale);
    Status synchronize();
    // Take-once: the first call records `reason` and aborts the transport; later calls change
    // nothing. Callable from any thread, concurrently with run().
    void abort(std::string const& reason);

    // One exchange operator on `stream`; dtype is DFC_DTYPE_*.
    Status run(OpAttrs const& a, std::vector<int64_t> const& dims, int32_t dtype, void const* x, void* y,
        cudaStream_t stream);

    int32_t rank() const { return rank_; }
    int32_t size() const { return size_; }

private:
    // The slot's buffers; at its first use allocated and cleared on `stream` (refused while
    // `stream` is being captured).
    Status slotFor(OpAttrs const& a, size_t sendBytes, size_t boardBytes, cudaStream_t stream, SlotBuffers*& out);
    // The exchange of one step: send[p] <- pack (on `stream`), comm: collective into board[p].
    template <typename Pack, typename Collective>
    Status publish(SlotBuffers& sb, int p, cudaStream_t stream, Pack pack, Collective collective);
    Status allGatherSlot(OpAttrs const& a, void const* x, size_t bytes, size_t slotBytes, cudaStream_t stream,
        bool stale, SlotBuffers*& sb, int& p);
    Status runHalo(OpAttrs const& a, std::vector<int64_t> const& dims, size_t es, void const* x, void* y,
        cudaStream_t stream, bool stale);
    Status runGather(OpAttrs const& a, std::vector<int64_t> const& dims, size_t es, void const* x, void* y,
        cudaStream_t stream, bool stale);
    Status runStats(OpAttrs const& a, std::vector<int64_t> const& dims, void const* x, void* y, cudaStream_t stream,
        bool stale);

    int32_t rank_, size_;
    std::vector<int64_t> rows_;
    std::vector<double> weights_;
    GnMode gn_;
    std::set<uint32_t> alwaysFresh_;
    std::unique_ptr<Transport> transport_;
    int device_ = 0;
    cudaStream_t comm_ = nullptr;
    std::mutex mu_;  // one enqueue at a time per context
    std::map<int64_t, SlotBuffers> slots_;
    std::atomic<uint64_t> step_{0};
    std::atomic<bool> stale_{false};
    AbortFlag abort_;  // take-once; reason published before the flag (host.h)
};

// Context lookup for the plugins: the calling thread's current context, else the process's
// only one. Null (with a reason) otherwise; `noneExists` (if given) tells whether the process
// has no context at all (the plugins then run local-only) rather than several, none current.
Context* currentContext(std::string& why, bool* noneExists = nullptr);

// One operator without a context and without communication (TensorRT timing a plugin while it
// builds an engine in a process that created no context): the output of localOnlyLayout
// (host.h), zero rows by cudaMemset2DAsync and x's rows by one cudaMemcpy2DAsync, all on `stream`.
Status runLocalOnly(OpAttrs const& a, std::vector<int64_t> const& dims, int32_t dtype, void const* x, void* y,
    cudaStream_t stream);
void makeCurrent(Context* ctx);

// dtype (DFC_DTYPE_*) element size, 0 if unsupported for the op.
size_t elementSize(OpKind kind, int32_t dtype);

}  // namespace dfc

#endif
