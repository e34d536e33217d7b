/* C ABI of libdfc_trt_plugins.so: the runtime's side of the dfc exchange plugins.
 *
 * The runtime creates one context per rank (its position in the group, the group size, the
 * group's band boundaries at latent level, the transport, the GroupNorm mode and the slots that
 * are always exchanged fresh), then before every evaluation of the rank's engine calls
 * dfc_context_set_step(ctx, step, stale) on the thread that will call enqueueV3. The plugins'
 * enqueue finds that thread's current context (the last one set_step/make_current was called
 * with on the thread), or else the process's only context. In a process with no context at all
 * (TensorRT timing the plugins while it builds an engine) they run local-only: no
 * communication, zero rows where peers' data would go, the local statistics.
 *
 * Every function returns DFC_OK (0) or an error code; dfc_last_error() then describes the
 * latest failure of the calling thread. Nothing throws across this ABI. */
#ifndef DFC_PLUGIN_H
#define DFC_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DFC_ABI_VERSION 1

enum {
    DFC_OK = 0,
    DFC_ERR_INVALID = 1, /* bad argument */
    DFC_ERR_CUDA = 2,    /* a CUDA call failed */
    DFC_ERR_NCCL = 3,    /* an NCCL call failed */
    DFC_ERR_ABORTED = 4, /* the context (or its group) was aborted */
    DFC_ERR_STATE = 5,   /* call out of order (e.g. stale read with no previous step) */
    DFC_ERR_TIMEOUT = 6, /* the single-device transport waited too long for a peer */
    DFC_ERR_NO_CONTEXT = 7
};

/* Transports. */
enum {
    DFC_TRANSPORT_NCCL = 0,  /* transport_handle: an initialized ncclComm_t of the group (owned by
                                the runtime; rank and size must match the communicator's) */
    DFC_TRANSPORT_LOCAL = 1  /* transport_handle: a dfc_local_group* (N ranks on one GPU) */
};

/* Element types of dfc_op_enqueue (TensorRT's DataType numbering for these three). */
enum { DFC_DTYPE_F32 = 0, DFC_DTYPE_F16 = 1, DFC_DTYPE_BF16 = 7 };

typedef struct dfc_context dfc_context;
typedef struct dfc_local_group dfc_local_group;

uint32_t dfc_abi_version(void);
/* The calling thread's latest error message ("" if none). Valid until its next failing call. */
const char* dfc_last_error(void);

/* Single-device transport: `size` ranks of one process sharing the current CUDA device, each
 * driven by its own host thread (a collective waits on the host until every rank reached it).
 * `timeout_ms` bounds each wait (0: 120000). Destroy after every context using it. */
int dfc_local_group_create(int32_t size, uint32_t timeout_ms, dfc_local_group** out);
int dfc_local_group_destroy(dfc_local_group* group);

/* rows: size+1 band boundaries at latent level (rows[0] = 0, rows[size] = H), the weights of
 * DfcStatsAllReduce. gn_mode: DFC_GN_* (dfc_contract.h). always_fresh: slots exchanged fresh
 * in every step. The context allocates its buffers lazily on the current CUDA device, and owns
 * a communication stream and events. */
int dfc_context_create(int32_t rank, int32_t size, const int64_t* rows, int32_t gn_mode,
    const uint32_t* always_fresh, int32_t n_always_fresh, int32_t transport, void* transport_handle,
    dfc_context** out);
/* Starts step `step` (0 first, increasing): with `stale` != 0 (and step > 0), exchanges read
 * the previous step's peer data and publish this step's in the background. Makes ctx current
 * on the calling thread. */
int dfc_context_set_step(dfc_context* ctx, uint64_t step, int32_t stale);
/* Makes ctx the calling thread's current context without changing the step. */
int dfc_context_make_current(dfc_context* ctx);
/* Waits until the context's communication stream is idle (end of a run, before destroy). */
int dfc_context_synchronize(dfc_context* ctx);
/* Marks the context (and, for the single-device transport, its whole group) failed: waiting
 * and later exchanges return DFC_ERR_ABORTED. With NCCL the runtime aborts its communicator.
 * Any thread, any time; take-once: the first call's reason is kept (and reaches the
 * transport), later calls return DFC_OK and change nothing. */
int dfc_context_abort(dfc_context* ctx, const char* reason);
int dfc_context_destroy(dfc_context* ctx);

/* Runs one exchange operator on `stream` with ctx, exactly as the TensorRT plugin's enqueue
 * does (op: DFC_OP_* name; for halo axis/top/bottom, for gather axis/parts; dims of x).
 * For executors other than TensorRT, and the GPU harness. */
int dfc_op_enqueue(dfc_context* ctx, const char* op, int64_t slot, int64_t axis, int64_t top, int64_t bottom,
    const int64_t* parts, int32_t n_parts, const int64_t* dims, int32_t n_dims, int32_t dtype, const void* x,
    void* y, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* DFC_PLUGIN_H */
