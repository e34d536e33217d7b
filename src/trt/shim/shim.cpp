// libdfc_trt_shim.so / libdfc_trt_shim_rtx.so: the C ABI of dfc_trt.h (beside this file) over TensorRT's
// C++ API. TensorRT is loaded with dlopen by path and never linked; its classes are used through
// the vtables of the headers this file is compiled against. TensorRT 11 and TensorRT-RTX 1.7
// lay out IBuilder, IBuilderConfig, INetworkDefinition, ITensor, IRuntime, ICudaEngine and
// IExecutionContext differently, so this one source is compiled twice: against the TensorRT 11.4
// headers (libdfc_trt_shim.so) and, with -DDFC_TRT_RTX, against the TensorRT-RTX 1.7 headers
// (libdfc_trt_shim_rtx.so). dfc_trt_open refuses a library whose major version differs from
// the headers'.
//
// No exception crosses the ABI: every entry point catches and turns failures into an error
// code plus the thread's last-error string, which includes the errors TensorRT logged.

// Compiled with -fvisibility=hidden: only the C ABI is exported.
#pragma GCC visibility push(default)
#include "dfc_trt.h"
#pragma GCC visibility pop

#include <NvInfer.h>
#include <NvOnnxParser.h>

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#ifdef DFC_TRT_RTX
static constexpr char const* kFamily = "TensorRT-RTX";
#else
static constexpr char const* kFamily = "TensorRT";
#endif

namespace {

thread_local std::string g_last_error;

int fail(int code, std::string message) {
    g_last_error = std::move(message);
    return code;
}

// Severity threshold for messages printed on stderr, from DFC_TRT_LOG
// (error|warning|info|verbose; default: none — errors are returned, not printed).
int printThreshold() {
    char const* v = std::getenv("DFC_TRT_LOG");
    if (v == nullptr) return -1;
    std::string s(v);
    if (s == "error") return static_cast<int>(nvinfer1::ILogger::Severity::kERROR);
    if (s == "warning") return static_cast<int>(nvinfer1::ILogger::Severity::kWARNING);
    if (s == "info") return static_cast<int>(nvinfer1::ILogger::Severity::kINFO);
    if (s == "verbose") return static_cast<int>(nvinfer1::ILogger::Severity::kVERBOSE);
    return -1;
}

// Collects the error messages TensorRT logs on the calling thread until the next take().
// One logger per process that is never destroyed: TensorRT may keep the first logger it was
// given for its whole lifetime.
class Logger final : public nvinfer1::ILogger {
public:
    Logger() : mPrint(printThreshold()) {}

    void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
        try {
            int s = static_cast<int>(severity);
            if (s <= mPrint) std::fprintf(stderr, "[%s] %s\n", kFamily, msg ? msg : "");
            if (severity <= Severity::kERROR && msg != nullptr) {
                if (!tErrors.empty()) tErrors += "\n";
                tErrors += msg;
            }
        } catch (...) {
        }
    }

    void clear() { tErrors.clear(); }

    // `what`, followed by what TensorRT logged on this thread since the last clear().
    std::string take(std::string what) {
        if (!tErrors.empty()) what += ": " + tErrors;
        tErrors.clear();
        return what;
    }

private:
    int mPrint;
    static thread_local std::string tErrors;
};

thread_local std::string Logger::tErrors;

Logger& theLogger() {
    static Logger* logger = new Logger();
    return *logger;
}

using CreateBuilderFn = void* (*)(void*, int32_t);
using CreateRuntimeFn = void* (*)(void*, int32_t);
using CreateParserFn = void* (*)(void*, void*, int);
using VersionFn = int32_t (*)();

// TensorRT objects are released with `delete` (their destructors are virtual).
template <typename T>
struct Deleter {
    void operator()(T* p) const { delete p; }
};
template <typename T>
using Owned = std::unique_ptr<T, Deleter<T>>;

}  // namespace

struct dfc_trt {
    void* lib = nullptr;
    void* parserLib = nullptr;
    CreateBuilderFn createBuilder = nullptr;
    CreateRuntimeFn createRuntime = nullptr;
    CreateParserFn createParser = nullptr;
    Logger& logger = theLogger();
    std::mutex mutex;  // builder, runtime and registry use
    Owned<nvinfer1::IBuilder> builder;
    Owned<nvinfer1::IRuntime> runtime;
    std::vector<std::string> plugins;  // libraries loaded into the builder's registry
    bool runtimePluginsLoaded = false;
    int32_t version = 0;
};

struct dfc_trt_engine {
    dfc_trt* trt = nullptr;
    Owned<nvinfer1::ICudaEngine> engine;
    Owned<nvinfer1::IExecutionContext> context;
};

namespace {

std::string versionString(int32_t v) {
    // getInferLibVersion(): major * 10000 + minor * 100 + patch.
    return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." +
           std::to_string(v % 100);
}

void copyOut(std::string const& s, char* out, size_t len) {
    if (out == nullptr || len == 0) return;
    size_t n = s.size() < len - 1 ? s.size() : len - 1;
    std::memcpy(out, s.data(), n);
    out[n] = '\0';
}

std::string dlError() {
    char const* e = dlerror();
    return e ? e : "unknown dlopen error";
}

int toDfcType(nvinfer1::DataType t) {
    return static_cast<int>(t);  // DFC_TRT_* follow TensorRT's DataType numbering
}

bool fillIo(dfc_trt_io& io, char const* name, bool isInput, nvinfer1::DataType type,
    nvinfer1::Dims const& dims) {
    std::memset(&io, 0, sizeof io);
    if (name == nullptr || std::strlen(name) >= sizeof io.name) return false;
    std::strcpy(io.name, name);
    io.is_input = isInput ? 1 : 0;
    io.dtype = toDfcType(type);
    if (dims.nbDims < 0 || dims.nbDims > 8) return false;
    io.n_dims = dims.nbDims;
    for (int i = 0; i < dims.nbDims; ++i) io.dims[i] = dims.d[i];
    return true;
}

// Makes `device`'s primary context current on this thread through the CUDA driver API, which
// every copy of the CUDA runtime (TensorRT-RTX links its own statically) follows.
int selectDevice(int32_t device) {
    using CUresult = int;
    using InitFn = CUresult (*)(unsigned);
    using DeviceGetFn = CUresult (*)(int*, int);
    using RetainFn = CUresult (*)(void**, int);
    using SetCurrentFn = CUresult (*)(void*);
    using CountFn = CUresult (*)(int*);
    void* cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (cuda == nullptr)
        return fail(DFC_TRT_ERR_RUNTIME,
            "no CUDA driver (libcuda.so.1): engines load only on a machine with a GPU (" +
                dlError() + ")");
    auto init = reinterpret_cast<InitFn>(dlsym(cuda, "cuInit"));
    auto count = reinterpret_cast<CountFn>(dlsym(cuda, "cuDeviceGetCount"));
    auto get = reinterpret_cast<DeviceGetFn>(dlsym(cuda, "cuDeviceGet"));
    auto retain = reinterpret_cast<RetainFn>(dlsym(cuda, "cuDevicePrimaryCtxRetain"));
    auto setCurrent = reinterpret_cast<SetCurrentFn>(dlsym(cuda, "cuCtxSetCurrent"));
    if (!init || !count || !get || !retain || !setCurrent)
        return fail(DFC_TRT_ERR_LOAD, "libcuda.so.1 lacks the driver API entry points");
    if (init(0) != 0) return fail(DFC_TRT_ERR_RUNTIME, "cuInit failed: no usable CUDA device");
    int n = 0;
    if (count(&n) != 0 || device < 0 || device >= n)
        return fail(DFC_TRT_ERR_INVALID,
            "CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(n) +
                " devices)");
    int dev = 0;
    void* ctx = nullptr;
    if (get(&dev, device) != 0 || retain(&ctx, dev) != 0 || setCurrent(ctx) != 0)
        return fail(DFC_TRT_ERR_RUNTIME,
            "cannot make CUDA device " + std::to_string(device) + " current");
    return DFC_TRT_OK;
}

bool readFile(char const* path, std::vector<char>& out) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return false;
    out.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    return !f.bad();
}

// The parser's errors, one line each, with the node and operator they are about.
std::string parserErrors(nvonnxparser::IParser& parser) {
    std::string s;
    for (int32_t i = 0; i < parser.getNbErrors(); ++i) {
        nvonnxparser::IParserError const* e = parser.getError(i);
        if (e == nullptr) continue;
        s += "\n  ";
        char const* name = e->nodeName();
        char const* op = e->nodeOperator();
        if (e->node() >= 0) {
            s += "node " + std::to_string(e->node());
            if (name && *name) s += std::string(" '") + name + "'";
            if (op && *op) s += std::string(" (op ") + op + ")";
            s += ": ";
        }
        s += e->desc() ? e->desc() : "(no description)";
    }
    return s;
}

int loadRuntimePlugins(dfc_trt* trt) {
    if (trt->runtimePluginsLoaded) return DFC_TRT_OK;
    nvinfer1::IPluginRegistry& reg = trt->runtime->getPluginRegistry();
    if (&reg != &trt->builder->getPluginRegistry()) {
        for (auto const& p : trt->plugins)
            if (reg.loadLibrary(p.c_str()) == nullptr)
                return fail(DFC_TRT_ERR_LOAD,
                    trt->logger.take("cannot load plugin library " + p + " into the runtime"));
    }
    trt->runtimePluginsLoaded = true;
    return DFC_TRT_OK;
}

}  // namespace

extern "C" {

uint32_t dfc_trt_abi_version(void) { return DFC_TRT_ABI_VERSION; }

const char* dfc_trt_last_error(void) { return g_last_error.c_str(); }

int dfc_trt_open(const char* lib, const char* parser_lib, char* name_out, size_t name_len,
    char* version_out, size_t version_len, dfc_trt** out) {
    try {
        if (lib == nullptr || parser_lib == nullptr || out == nullptr)
            return fail(DFC_TRT_ERR_INVALID, "dfc_trt_open: null argument");
        *out = nullptr;
        auto trt = std::make_unique<dfc_trt>();
        trt->logger.clear();
        // RTLD_GLOBAL: plugin libraries and the parser resolve TensorRT's symbols from it.
        trt->lib = dlopen(lib, RTLD_NOW | RTLD_GLOBAL);
        if (trt->lib == nullptr)
            return fail(DFC_TRT_ERR_LOAD, std::string("cannot load ") + lib + ": " + dlError());
        auto closeLib = [&trt]() {
            if (trt->parserLib) dlclose(trt->parserLib);
            if (trt->lib) dlclose(trt->lib);
            trt->parserLib = trt->lib = nullptr;
        };
        auto version = reinterpret_cast<VersionFn>(dlsym(trt->lib, "getInferLibVersion"));
        trt->createBuilder =
            reinterpret_cast<CreateBuilderFn>(dlsym(trt->lib, "createInferBuilder_INTERNAL"));
        trt->createRuntime =
            reinterpret_cast<CreateRuntimeFn>(dlsym(trt->lib, "createInferRuntime_INTERNAL"));
        if (!version || !trt->createBuilder || !trt->createRuntime) {
            closeLib();
            return fail(DFC_TRT_ERR_LOAD,
                std::string(lib) +
                    " lacks getInferLibVersion / createInferBuilder_INTERNAL / "
                    "createInferRuntime_INTERNAL: not a TensorRT library");
        }
        trt->version = version();
        if (trt->version / 10000 != NV_TENSORRT_MAJOR) {
            std::string found = versionString(trt->version);
            closeLib();
            return fail(DFC_TRT_ERR_LOAD,
                std::string(lib) + " is version " + found + ", but this shim was compiled for " +
                    kFamily + " " + std::to_string(NV_TENSORRT_MAJOR) +
                    ".x headers; use the shim built for that library");
        }
        trt->parserLib = dlopen(parser_lib, RTLD_NOW | RTLD_GLOBAL);
        if (trt->parserLib == nullptr) {
            std::string e = dlError();
            closeLib();
            return fail(DFC_TRT_ERR_LOAD, std::string("cannot load ") + parser_lib + ": " + e);
        }
        trt->createParser =
            reinterpret_cast<CreateParserFn>(dlsym(trt->parserLib, "createNvOnnxParser_INTERNAL"));
        if (!trt->createParser) {
            closeLib();
            return fail(DFC_TRT_ERR_LOAD,
                std::string(parser_lib) + " lacks createNvOnnxParser_INTERNAL: not an ONNX parser");
        }
        trt->builder.reset(static_cast<nvinfer1::IBuilder*>(
            trt->createBuilder(&trt->logger, NV_TENSORRT_VERSION)));
        if (!trt->builder) {
            std::string e = trt->logger.take(std::string("cannot create a ") + kFamily + " builder");
            closeLib();
            return fail(DFC_TRT_ERR_LOAD, e);
        }
        copyOut(kFamily, name_out, name_len);
        copyOut(versionString(trt->version), version_out, version_len);
        *out = trt.release();
        return DFC_TRT_OK;
    } catch (std::exception const& e) {
        return fail(DFC_TRT_ERR_LOAD, std::string("dfc_trt_open: ") + e.what());
    } catch (...) {
        return fail(DFC_TRT_ERR_LOAD, "dfc_trt_open: unknown exception");
    }
}

void dfc_trt_close(dfc_trt* trt) {
    if (trt == nullptr) return;
    try {
        // TensorRT objects go before their libraries; the libraries stay loaded (plugin
        // libraries registered with TensorRT may still refer to them).
        trt->runtime.reset();
        trt->builder.reset();
    } catch (...) {
    }
    delete trt;
}

int dfc_trt_load_plugins(dfc_trt* trt, const char* plugin_lib) {
    try {
        if (trt == nullptr || plugin_lib == nullptr)
            return fail(DFC_TRT_ERR_INVALID, "dfc_trt_load_plugins: null argument");
        std::lock_guard<std::mutex> lock(trt->mutex);
        trt->logger.clear();
        if (trt->builder->getPluginRegistry().loadLibrary(plugin_lib) == nullptr)
            return fail(DFC_TRT_ERR_LOAD,
                trt->logger.take(std::string("cannot load plugin library ") + plugin_lib));
        trt->plugins.emplace_back(plugin_lib);
        trt->runtimePluginsLoaded = false;
        if (trt->runtime) return loadRuntimePlugins(trt);
        return DFC_TRT_OK;
    } catch (std::exception const& e) {
        return fail(DFC_TRT_ERR_LOAD, std::string("dfc_trt_load_plugins: ") + e.what());
    } catch (...) {
        return fail(DFC_TRT_ERR_LOAD, "dfc_trt_load_plugins: unknown exception");
    }
}

int dfc_trt_build(dfc_trt* trt, const char* onnx_path, const char* engine_path, uint32_t flags,
    uint64_t workspace_bytes, dfc_trt_io* io, int32_t max_io, int32_t* n_io) {
    try {
        if (trt == nullptr || onnx_path == nullptr || engine_path == nullptr || n_io == nullptr ||
            (io == nullptr && max_io > 0) || max_io < 0)
            return fail(DFC_TRT_ERR_INVALID, "dfc_trt_build: bad argument");
        *n_io = 0;
        if (flags & ~static_cast<uint32_t>(DFC_TRT_BUILD_FP16 | DFC_TRT_BUILD_BF16))
            return fail(DFC_TRT_ERR_INVALID, "dfc_trt_build: unknown flags");
        if (flags != 0)
            // TensorRT 11 and TensorRT-RTX have no FP16/BF16 builder flags: every network is
            // strongly typed and its layers run in the types the ONNX graph gives them.
            return fail(DFC_TRT_ERR_INVALID,
                std::string(kFamily) + " " + versionString(trt->version) +
                    " builds strongly typed networks only: precision follows the ONNX graph's "
                    "types, there is no fp16/bf16 builder flag; build a half-precision model");
        std::lock_guard<std::mutex> lock(trt->mutex);
        trt->logger.clear();
        Owned<nvinfer1::INetworkDefinition> network(trt->builder->createNetworkV2(0));
        if (!network)
            return fail(DFC_TRT_ERR_BUILD, trt->logger.take("cannot create a network"));
        Owned<nvonnxparser::IParser> parser(static_cast<nvonnxparser::IParser*>(
            trt->createParser(network.get(), &trt->logger, NV_ONNX_PARSER_VERSION)));
        if (!parser) return fail(DFC_TRT_ERR_LOAD, trt->logger.take("cannot create an ONNX parser"));
        {
            std::ifstream probe(onnx_path, std::ios::binary);
            if (!probe)
                return fail(DFC_TRT_ERR_IO, std::string("cannot read ") + onnx_path);
        }
        if (!parser->parseFromFile(
                onnx_path, static_cast<int32_t>(nvinfer1::ILogger::Severity::kERROR))) {
            std::string errs = parserErrors(*parser);
            trt->logger.clear();
            return fail(DFC_TRT_ERR_PARSE,
                std::string(kFamily) + "'s ONNX parser rejected " + onnx_path + ":" + errs);
        }
        // Network I/O, as parsed.
        std::vector<dfc_trt_io> found;
        for (int32_t i = 0; i < network->getNbInputs() + network->getNbOutputs(); ++i) {
            bool input = i < network->getNbInputs();
            nvinfer1::ITensor* t =
                input ? network->getInput(i) : network->getOutput(i - network->getNbInputs());
            dfc_trt_io entry;
            if (t == nullptr ||
                !fillIo(entry, t->getName(), input, t->getType(), t->getDimensions()))
                return fail(DFC_TRT_ERR_PARSE,
                    std::string("network tensor ") + std::to_string(i) +
                        " has no name, a name of 256 bytes or more, or more than 8 dimensions");
            found.push_back(entry);
        }
        bool plugins = false;
        for (int32_t i = 0; i < network->getNbLayers(); ++i) {
            nvinfer1::ILayer* l = network->getLayer(i);
            if (l && l->getType() == nvinfer1::LayerType::kPLUGIN_V3) plugins = true;
        }
        Owned<nvinfer1::IBuilderConfig> config(trt->builder->createBuilderConfig());
        if (!config) return fail(DFC_TRT_ERR_BUILD, trt->logger.take("cannot create a builder config"));
        if (workspace_bytes > 0)
            config->setMemoryPoolLimit(nvinfer1::MemoryPoolType::kWORKSPACE,
                static_cast<std::size_t>(workspace_bytes));
        // Exchange plugins must run in graph order on one stream on every rank.
        if (plugins && !config->setMaxAuxStreams(0))
            return fail(DFC_TRT_ERR_BUILD, trt->logger.take("setMaxAuxStreams(0) failed"));
        Owned<nvinfer1::IHostMemory> blob(trt->builder->buildSerializedNetwork(*network, *config));
        if (!blob || blob->size() == 0)
            return fail(DFC_TRT_ERR_BUILD,
                trt->logger.take(std::string(kFamily) + " could not build an engine from " +
                                 onnx_path));
        {
            std::ofstream f(engine_path, std::ios::binary | std::ios::trunc);
            if (!f) return fail(DFC_TRT_ERR_IO, std::string("cannot create ") + engine_path);
            f.write(static_cast<char const*>(blob->data()),
                static_cast<std::streamsize>(blob->size()));
            f.flush();
            if (!f) {
                f.close();
                std::remove(engine_path);
                return fail(DFC_TRT_ERR_IO, std::string("cannot write ") + engine_path);
            }
        }
        int32_t n = static_cast<int32_t>(found.size());
        for (int32_t i = 0; i < n && i < max_io; ++i) io[i] = found[static_cast<size_t>(i)];
        *n_io = n;
        return DFC_TRT_OK;
    } catch (std::exception const& e) {
        return fail(DFC_TRT_ERR_BUILD, std::string("dfc_trt_build: ") + e.what());
    } catch (...) {
        return fail(DFC_TRT_ERR_BUILD, "dfc_trt_build: unknown exception");
    }
}

int dfc_trt_engine_load(dfc_trt* trt, const char* engine_path, int32_t device, dfc_trt_engine** out) {
    try {
        if (trt == nullptr || engine_path == nullptr || out == nullptr)
            return fail(DFC_TRT_ERR_INVALID, "dfc_trt_engine_load: null argument");
        *out = nullptr;
        std::vector<char> blob;
        if (!readFile(engine_path, blob) || blob.empty())
            return fail(DFC_TRT_ERR_IO, std::string("cannot read ") + engine_path);
        int rc = selectDevice(device);
        if (rc != DFC_TRT_OK) return rc;
        std::lock_guard<std::mutex> lock(trt->mutex);
        trt->logger.clear();
        if (!trt->runtime) {
            trt->runtime.reset(static_cast<nvinfer1::IRuntime*>(
                trt->createRuntime(&trt->logger, NV_TENSORRT_VERSION)));
            if (!trt->runtime)
                return fail(DFC_TRT_ERR_RUNTIME,
                    trt->logger.take(std::string("cannot create a ") + kFamily + " runtime"));
        }
        rc = loadRuntimePlugins(trt);
        if (rc != DFC_TRT_OK) return rc;
        auto e = std::make_unique<dfc_trt_engine>();
        e->trt = trt;
        e->engine.reset(trt->runtime->deserializeCudaEngine(blob.data(), blob.size()));
        if (!e->engine)
            return fail(DFC_TRT_ERR_RUNTIME,
                trt->logger.take(std::string("cannot deserialize ") + engine_path));
        e->context.reset(e->engine->createExecutionContext());
        if (!e->context)
            return fail(DFC_TRT_ERR_RUNTIME,
                trt->logger.take(std::string("cannot create an execution context for ") +
                                 engine_path));
        *out = e.release();
        return DFC_TRT_OK;
    } catch (std::exception const& e) {
        return fail(DFC_TRT_ERR_RUNTIME, std::string("dfc_trt_engine_load: ") + e.what());
    } catch (...) {
        return fail(DFC_TRT_ERR_RUNTIME, "dfc_trt_engine_load: unknown exception");
    }
}

int dfc_trt_engine_io(dfc_trt_engine* e, dfc_trt_io* io, int32_t max_io, int32_t* n_io) {
    try {
        if (e == nullptr || n_io == nullptr || max_io < 0 || (io == nullptr && max_io > 0))
            return fail(DFC_TRT_ERR_INVALID, "dfc_trt_engine_io: bad argument");
        int32_t n = e->engine->getNbIOTensors();
        for (int32_t i = 0; i < n && i < max_io; ++i) {
            char const* name = e->engine->getIOTensorName(i);
            bool input = e->engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT;
            if (!fillIo(io[i], name, input, e->engine->getTensorDataType(name),
                    e->engine->getTensorShape(name)))
                return fail(DFC_TRT_ERR_RUNTIME,
                    "engine tensor " + std::to_string(i) +
                        " has no name, a name of 256 bytes or more, or more than 8 dimensions");
        }
        *n_io = n;
        return DFC_TRT_OK;
    } catch (...) {
        return fail(DFC_TRT_ERR_RUNTIME, "dfc_trt_engine_io: exception");
    }
}

int dfc_trt_engine_set_address(dfc_trt_engine* e, const char* name, void* device_ptr) {
    try {
        if (e == nullptr || name == nullptr)
            return fail(DFC_TRT_ERR_INVALID, "dfc_trt_engine_set_address: null argument");
        e->trt->logger.clear();
        if (!e->context->setTensorAddress(name, device_ptr))
            return fail(DFC_TRT_ERR_INVALID,
                e->trt->logger.take(std::string("cannot bind tensor '") + name + "'"));
        return DFC_TRT_OK;
    } catch (...) {
        return fail(DFC_TRT_ERR_RUNTIME, "dfc_trt_engine_set_address: exception");
    }
}

int dfc_trt_engine_enqueue(dfc_trt_engine* e, void* stream) {
    try {
        if (e == nullptr) return fail(DFC_TRT_ERR_INVALID, "dfc_trt_engine_enqueue: null engine");
        e->trt->logger.clear();
        if (!e->context->enqueueV3(static_cast<cudaStream_t>(stream)))
            return fail(DFC_TRT_ERR_RUNTIME, e->trt->logger.take("enqueueV3 failed"));
        return DFC_TRT_OK;
    } catch (...) {
        return fail(DFC_TRT_ERR_RUNTIME, "dfc_trt_engine_enqueue: exception");
    }
}

void dfc_trt_engine_destroy(dfc_trt_engine* e) {
    if (e == nullptr) return;
    try {
        e->context.reset();
        e->engine.reset();
    } catch (...) {
    }
    delete e;
}

}  // extern "C"
