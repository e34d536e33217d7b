#include "transport.h"

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <sstream>
#include <vector>

#include <nccl.h>

#include "dfc_plugin.h"

namespace dfc {

namespace {

Status cudaFail(cudaError_t e, char const* what) {
    std::ostringstream os;
    os << what << ": " << cudaGetErrorString(e);
    return {DFC_ERR_CUDA, os.str()};
}

// ---------------------------------------------------------------- NCCL

class NcclTransport final : public Transport {
public:
    NcclTransport(ncclComm_t comm, int32_t rank, int32_t size) : comm_(comm), rank_(rank), size_(size) {}
    int32_t rank() const override { return rank_; }
    int32_t size() const override { return size_; }
    char const* name() const override { return "nccl"; }

    Status allGather(void const* send, void* recv, size_t bytes, cudaStream_t stream) override {
        return check(ncclAllGather(send, recv, bytes, ncclUint8, comm_, stream), "ncclAllGather");
    }

    Status exchange(PeerOp const* ops, int32_t n, cudaStream_t stream) override {
        Status st = check(ncclGroupStart(), "ncclGroupStart");
        if (!st.ok()) return st;
        for (int32_t i = 0; i < n && st.ok(); ++i) {
            if (ops[i].sendBytes > 0)
                st = check(ncclSend(ops[i].send, ops[i].sendBytes, ncclUint8, ops[i].peer, comm_, stream), "ncclSend");
            if (st.ok() && ops[i].recvBytes > 0)
                st = check(ncclRecv(ops[i].recv, ops[i].recvBytes, ncclUint8, ops[i].peer, comm_, stream), "ncclRecv");
        }
        Status end = check(ncclGroupEnd(), "ncclGroupEnd");
        return st.ok() ? end : st;
    }

    void abort(std::string const&) override {}  // the runtime owns (and aborts) the communicator

private:
    Status check(ncclResult_t r, char const* what) {
        if (r == ncclInProgress) {  // non-blocking communicator: wait for the call to be enqueued
            do {
                if (ncclCommGetAsyncError(comm_, &r) != ncclSuccess) break;
            } while (r == ncclInProgress);
        }
        if (r == ncclSuccess) return {};
        std::ostringstream os;
        os << what << " failed on rank " << rank_ << ": " << ncclGetErrorString(r);
        char const* last = ncclGetLastError(comm_);
        if (last != nullptr && *last != '\0') os << " (" << last << ")";
        return {DFC_ERR_NCCL, os.str()};
    }

    ncclComm_t comm_;
    int32_t rank_, size_;
};

}  // namespace

std::unique_ptr<Transport> makeNcclTransport(void* comm, int32_t rank, int32_t size, Status& st) {
    if (comm == nullptr) {
        st = {DFC_ERR_INVALID, "NCCL transport needs a communicator"};
        return nullptr;
    }
    auto c = static_cast<ncclComm_t>(comm);
    int count = 0, r = 0;
    if (ncclCommCount(c, &count) != ncclSuccess || ncclCommUserRank(c, &r) != ncclSuccess) {
        st = {DFC_ERR_NCCL, "cannot query the NCCL communicator"};
        return nullptr;
    }
    if (count != size || r != rank) {
        std::ostringstream os;
        os << "the NCCL communicator is rank " << r << " of " << count << ", the context rank " << rank << " of "
           << size;
        st = {DFC_ERR_INVALID, os.str()};
        return nullptr;
    }
    return std::unique_ptr<Transport>(new NcclTransport(c, rank, size));
}

// ---------------------------------------------------------------- single device
//
// Each call is a round numbered by the rank's call count (all ranks make the same calls in the
// same order). A rank posts its send buffers and a `ready` event recorded on its stream, waits
// on the host until every rank posted, then pulls what it receives with device copies ordered
// after the senders' ready events, records `pulled`, waits until every rank recorded theirs and
// makes its stream wait on all of them: when a rank's stream passes the call, every peer has
// finished reading its send buffers, as with an NCCL collective.

struct LocalPost {
    bool allGather = false;
    void const* all = nullptr;     // allGather: the buffer every rank reads
    size_t allBytes = 0;
    std::vector<PeerOp> ops;       // exchange: what this rank sends to whom
    cudaEvent_t ready = nullptr;
    cudaEvent_t pulled = nullptr;
};

struct LocalRound {
    std::vector<LocalPost> posts;
    int32_t posted = 0, pulled = 0, left = 0;
};

struct LocalGroup {
    int32_t size = 0;
    std::chrono::milliseconds timeout{120000};
    std::mutex mu;
    std::condition_variable cv;
    std::map<uint64_t, LocalRound> rounds;
    bool aborted = false;
    std::string reason;
};

namespace {

class LocalTransport final : public Transport {
public:
    LocalTransport(LocalGroup* g, int32_t rank) : g_(g), rank_(rank) {}
    int32_t rank() const override { return rank_; }
    int32_t size() const override { return g_->size; }
    char const* name() const override { return "local"; }

    Status allGather(void const* send, void* recv, size_t bytes, cudaStream_t stream) override {
        LocalPost post;
        post.allGather = true;
        post.all = send;
        post.allBytes = bytes;
        return round(std::move(post), stream, [&](std::vector<LocalPost> const& posts) -> Status {
            for (int32_t q = 0; q < g_->size; ++q) {
                if (posts[q].allBytes != bytes) return mismatch(q, posts[q].allBytes, bytes);
                if (q != rank_) {
                    cudaError_t e = cudaStreamWaitEvent(stream, posts[q].ready, 0);
                    if (e != cudaSuccess) return cudaFail(e, "cudaStreamWaitEvent");
                }
                cudaError_t e = cudaMemcpyAsync(static_cast<char*>(recv) + q * bytes, posts[q].all, bytes,
                    cudaMemcpyDeviceToDevice, stream);
                if (e != cudaSuccess) return cudaFail(e, "cudaMemcpyAsync");
            }
            return {};
        });
    }

    Status exchange(PeerOp const* ops, int32_t n, cudaStream_t stream) override {
        LocalPost post;
        post.ops.assign(ops, ops + n);
        return round(std::move(post), stream, [&](std::vector<LocalPost> const& posts) -> Status {
            for (int32_t i = 0; i < n; ++i) {
                if (ops[i].recvBytes == 0) continue;
                int32_t q = ops[i].peer;
                if (q < 0 || q >= g_->size) return {DFC_ERR_INVALID, "peer outside the group"};
                PeerOp const* from = nullptr;
                for (PeerOp const& o : posts[q].ops)
                    if (o.peer == rank_) from = &o;
                size_t got = from != nullptr ? from->sendBytes : 0;
                if (got != ops[i].recvBytes) return mismatch(q, got, ops[i].recvBytes);
                cudaError_t e = cudaStreamWaitEvent(stream, posts[q].ready, 0);
                if (e == cudaSuccess)
                    e = cudaMemcpyAsync(ops[i].recv, from->send, got, cudaMemcpyDeviceToDevice, stream);
                if (e != cudaSuccess) return cudaFail(e, "device copy");
            }
            return {};
        });
    }

    void abort(std::string const& reason) override {
        std::lock_guard<std::mutex> lk(g_->mu);
        if (!g_->aborted) {
            g_->aborted = true;
            g_->reason = reason;
        }
        g_->cv.notify_all();
    }

private:
    Status mismatch(int32_t q, size_t got, size_t want) {
        std::ostringstream os;
        os << "rank " << q << " sends " << got << " bytes, rank " << rank_ << " expects " << want
           << " (the ranks run different exchanges)";
        Status st{DFC_ERR_STATE, os.str()};
        abort(st.message);
        return st;
    }

    // Waits until `pred` holds for the round; false (and st set) on abort or timeout.
    template <typename Pred>
    bool waitFor(std::unique_lock<std::mutex>& lk, Pred pred, char const* what, Status& st) {
        bool ok = g_->cv.wait_for(lk, g_->timeout, [&] { return g_->aborted || pred(); });
        if (g_->aborted) {
            st = {DFC_ERR_ABORTED, "exchange aborted: " + g_->reason};
            return false;
        }
        if (!ok) {
            std::ostringstream os;
            os << "rank " << rank_ << " waited more than " << g_->timeout.count() << " ms for its peers to " << what
               << " (call " << calls_ << ")";
            st = {DFC_ERR_TIMEOUT, os.str()};
            g_->aborted = true;
            g_->reason = st.message;
            g_->cv.notify_all();
            return false;
        }
        return true;
    }

    template <typename Pull>
    Status round(LocalPost post, cudaStream_t stream, Pull pull) {
        uint64_t id = calls_++;
        cudaError_t e = cudaEventCreateWithFlags(&post.ready, cudaEventDisableTiming);
        if (e == cudaSuccess) e = cudaEventCreateWithFlags(&post.pulled, cudaEventDisableTiming);
        if (e == cudaSuccess) e = cudaEventRecord(post.ready, stream);
        if (e != cudaSuccess) {
            if (post.ready) cudaEventDestroy(post.ready);
            if (post.pulled) cudaEventDestroy(post.pulled);
            return cudaFail(e, "event");
        }
        Status st;
        std::unique_lock<std::mutex> lk(g_->mu);
        LocalRound& r = g_->rounds[id];
        if (r.posts.empty()) r.posts.resize(static_cast<size_t>(g_->size));
        r.posts[static_cast<size_t>(rank_)] = std::move(post);
        ++r.posted;
        g_->cv.notify_all();
        if (!waitFor(lk, [&] { return r.posted == g_->size; }, "post their data", st)) return leave(lk, id, st);
        std::vector<LocalPost> const& posts = r.posts;
        lk.unlock();
        st = pull(posts);  // posts is stable: nobody adds to a full round
        if (st.ok()) {
            e = cudaEventRecord(posts[static_cast<size_t>(rank_)].pulled, stream);
            if (e != cudaSuccess) st = cudaFail(e, "cudaEventRecord");
        }
        lk.lock();
        if (!st.ok()) {
            if (!g_->aborted) {
                g_->aborted = true;
                g_->reason = st.message;
            }
            g_->cv.notify_all();
            return leave(lk, id, st);
        }
        ++r.pulled;
        g_->cv.notify_all();
        if (!waitFor(lk, [&] { return r.pulled == g_->size; }, "read this rank's data", st)) return leave(lk, id, st);
        for (int32_t q = 0; q < g_->size; ++q) {
            if (q == rank_) continue;
            e = cudaStreamWaitEvent(stream, r.posts[static_cast<size_t>(q)].pulled, 0);
            if (e != cudaSuccess) {
                st = cudaFail(e, "cudaStreamWaitEvent");
                break;
            }
        }
        return leave(lk, id, st);
    }

    Status leave(std::unique_lock<std::mutex>& lk, uint64_t id, Status st) {
        auto it = g_->rounds.find(id);
        if (it != g_->rounds.end() && ++it->second.left == g_->size) {
            for (LocalPost& p : it->second.posts) {
                if (p.ready) cudaEventDestroy(p.ready);
                if (p.pulled) cudaEventDestroy(p.pulled);
            }
            g_->rounds.erase(it);
        }
        lk.unlock();
        return st;
    }

    LocalGroup* g_;
    int32_t rank_;
    uint64_t calls_ = 0;
};

}  // namespace

LocalGroup* localGroupCreate(int32_t size, uint32_t timeoutMs) {
    auto* g = new LocalGroup;
    g->size = size;
    if (timeoutMs > 0) g->timeout = std::chrono::milliseconds(timeoutMs);
    return g;
}

void localGroupDestroy(LocalGroup* group) {
    if (group == nullptr) return;
    for (auto& kv : group->rounds)
        for (LocalPost& p : kv.second.posts) {
            if (p.ready) cudaEventDestroy(p.ready);
            if (p.pulled) cudaEventDestroy(p.pulled);
        }
    delete group;
}

int32_t localGroupSize(LocalGroup const* group) { return group->size; }

std::unique_ptr<Transport> makeLocalTransport(LocalGroup* group, int32_t rank, Status& st) {
    if (group == nullptr) {
        st = {DFC_ERR_INVALID, "the single-device transport needs a dfc_local_group"};
        return nullptr;
    }
    if (rank < 0 || rank >= group->size) {
        st = {DFC_ERR_INVALID, "rank outside the local group"};
        return nullptr;
    }
    return std::unique_ptr<Transport>(new LocalTransport(group, rank));
}

}  // namespace dfc
