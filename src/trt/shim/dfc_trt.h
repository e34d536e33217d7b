/* C ABI of libdfc_trt_shim.so: a thin layer over TensorRT's C++ API (ONNX parser, builder,
 * runtime, execution context) that dfc loads at run time, so that dfc itself builds and runs
 * without TensorRT. The shim in turn loads TensorRT's libraries by path (TensorRT 10/11:
 * libnvinfer.so.* + libnvonnxparser.so.*; TensorRT-RTX: libtensorrt_rtx.so.1 +
 * libtensorrt_onnxparser_rtx.so.1) and never links them.
 *
 * Every function returns DFC_TRT_OK (0) or an error code; dfc_trt_last_error() then describes
 * the latest failure of the calling thread (TensorRT's own error messages included). Nothing
 * throws across this ABI. */
#ifndef DFC_TRT_H
#define DFC_TRT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DFC_TRT_ABI_VERSION 1

enum {
    DFC_TRT_OK = 0,
    DFC_TRT_ERR_LOAD = 1,    /* a library could not be loaded or lacks a symbol */
    DFC_TRT_ERR_PARSE = 2,   /* the ONNX parser refused the model */
    DFC_TRT_ERR_BUILD = 3,   /* the builder failed */
    DFC_TRT_ERR_IO = 4,      /* reading or writing a file failed */
    DFC_TRT_ERR_RUNTIME = 5, /* deserialization or execution failed (no GPU, wrong engine) */
    DFC_TRT_ERR_INVALID = 6  /* bad argument */
};

/* Builder flags. (The bf16 flag is DFC_TRT_BUILD_BF16: DFC_TRT_BF16 is the element type below;
 * DFC_TRT_FP16 stays as the fp16 flag's first name.) */
enum { DFC_TRT_FP16 = 1, DFC_TRT_BUILD_FP16 = 1, DFC_TRT_BUILD_BF16 = 2 };

/* Element types of engine I/O (TensorRT's DataType numbering). */
enum {
    DFC_TRT_F32 = 0, DFC_TRT_F16 = 1, DFC_TRT_I8 = 2, DFC_TRT_I32 = 3, DFC_TRT_BOOL = 4,
    DFC_TRT_U8 = 5, DFC_TRT_BF16 = 7, DFC_TRT_I64 = 8
};

typedef struct dfc_trt dfc_trt;               /* loaded TensorRT libraries and a logger */
typedef struct dfc_trt_engine dfc_trt_engine; /* a deserialized engine and one execution context */

/* One network or engine input/output. */
typedef struct {
    char name[256];
    int32_t is_input;
    int32_t dtype;   /* DFC_TRT_* */
    int32_t n_dims;
    int64_t dims[8];
} dfc_trt_io;

uint32_t dfc_trt_abi_version(void);
const char* dfc_trt_last_error(void);

/* Loads TensorRT (`lib`) and its ONNX parser (`parser_lib`). `name_out` receives
 * "TensorRT" or "TensorRT-RTX", `version_out` "major.minor.patch". */
int dfc_trt_open(const char* lib, const char* parser_lib, char* name_out, size_t name_len,
    char* version_out, size_t version_len, dfc_trt** out);
void dfc_trt_close(dfc_trt* trt);

/* Loads a plugin library (e.g. libdfc_trt_plugins.so) into TensorRT's plugin registry. */
int dfc_trt_load_plugins(dfc_trt* trt, const char* plugin_lib);

/* Parses `onnx_path` (external data resolved next to it), builds a serialized engine with
 * `flags` (DFC_TRT_*) and `workspace_bytes` (0: TensorRT's default), and writes it to
 * `engine_path`. The parsed network's inputs and outputs are written to `io` (at most `max_io`
 * entries; `n_io` receives their number). No GPU is needed where the TensorRT build supports
 * ahead-of-time builds (TensorRT-RTX). */
int dfc_trt_build(dfc_trt* trt, const char* onnx_path, const char* engine_path, uint32_t flags,
    uint64_t workspace_bytes, dfc_trt_io* io, int32_t max_io, int32_t* n_io);

/* Deserializes an engine on CUDA device `device` and creates one execution context. The device's
 * primary context is made current on the calling thread (CUDA driver API, libcuda.so.1), which
 * every copy of the CUDA runtime follows. Plugin libraries loaded with dfc_trt_load_plugins are
 * registered with the runtime first. Destroy every engine before dfc_trt_close. */
int dfc_trt_engine_load(dfc_trt* trt, const char* engine_path, int32_t device, dfc_trt_engine** out);
int dfc_trt_engine_io(dfc_trt_engine* e, dfc_trt_io* io, int32_t max_io, int32_t* n_io);
/* Binds a device buffer to the tensor `name` (once; buffers stay bound across enqueues). */
int dfc_trt_engine_set_address(dfc_trt_engine* e, const char* name, void* device_ptr);
/* enqueueV3 on `stream` (a cudaStream_t). */
int dfc_trt_engine_enqueue(dfc_trt_engine* e, void* stream);
void dfc_trt_engine_destroy(dfc_trt_engine* e);

#ifdef __cplusplus
}
#endif

#endif /* DFC_TRT_H */
