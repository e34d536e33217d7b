// Transports of the exchange operators: every collective is enqueued on a stream the caller
// owns (the context's communication stream); the transport decides how bytes move.
#ifndef DFC_TRT_TRANSPORT_H
#define DFC_TRT_TRANSPORT_H

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include <cuda_runtime_api.h>

namespace dfc {

struct Status {
    int code = 0;  // DFC_OK or DFC_ERR_*
    std::string message;
    bool ok() const { return code == 0; }
};

// One point-to-point pair of a grouped exchange: send `sendBytes` to `peer` and receive
// `recvBytes` from it (either may be 0).
struct PeerOp {
    int32_t peer = 0;
    void const* send = nullptr;
    size_t sendBytes = 0;
    void* recv = nullptr;
    size_t recvBytes = 0;
};

class Transport {
public:
    virtual ~Transport() = default;
    virtual int32_t rank() const = 0;
    virtual int32_t size() const = 0;
    virtual char const* name() const = 0;
    // recv[q*bytes .. (q+1)*bytes) = rank q's send, for every q (own included).
    virtual Status allGather(void const* send, void* recv, size_t bytes, cudaStream_t stream) = 0;
    // Grouped sends/receives with the listed peers (all ranks list matching pairs).
    virtual Status exchange(PeerOp const* ops, int32_t n, cudaStream_t stream) = 0;
    virtual void abort(std::string const& reason) = 0;
};

// NCCL: the runtime's communicator (an ncclComm_t passed as void*).
std::unique_ptr<Transport> makeNcclTransport(void* comm, int32_t rank, int32_t size, Status& st);

// Single-device: N ranks of one process on one GPU, device-to-device copies.
struct LocalGroup;
std::unique_ptr<Transport> makeLocalTransport(LocalGroup* group, int32_t rank, Status& st);
LocalGroup* localGroupCreate(int32_t size, uint32_t timeoutMs);
void localGroupDestroy(LocalGroup* group);
int32_t localGroupSize(LocalGroup const* group);

}  // namespace dfc

#endif
