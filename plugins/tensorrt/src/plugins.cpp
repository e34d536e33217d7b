// The TensorRT IPluginV3 plugins of the three exchange operators and their creators
// (IPluginCreatorV3One), plus the plugin-library entry points (getCreators, setLoggerFinder).
// Plugin objects hold only their attributes; all state lives in the rank's dfc context.
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <vector>

#include <NvInferRuntime.h>

#include "context.h"
#include "dfc_plugin.h"
#include "host.h"

using namespace nvinfer1;

namespace dfc {
namespace {

std::mutex gLogMu;
ILoggerFinder* gLoggerFinder = nullptr;

// Never throws (it is called from the noexcept TensorRT entry points, also in their catch
// handlers): a message that cannot be built or logged is dropped.
void logMessage(ILogger::Severity severity, std::string const& msg) noexcept {
    try {
        std::string line = "dfc: " + msg;
        std::lock_guard<std::mutex> lk(gLogMu);
        ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
        if (logger != nullptr) logger->log(severity, line.c_str());
        else std::fprintf(stderr, "%s\n", line.c_str());
    } catch (...) {
    }
}
void logError(std::string const& msg) noexcept { logMessage(ILogger::Severity::kERROR, msg); }

// TensorRT fields <-> host Field (serialization logic lives in host.cpp).
std::vector<Field> fromCollection(PluginFieldCollection const* fc) {
    std::vector<Field> out;
    if (fc == nullptr) return out;
    for (int32_t i = 0; i < fc->nbFields; ++i) {
        PluginField const& pf = fc->fields[i];
        if (pf.name == nullptr) continue;
        Field f;
        f.name = pf.name;
        int32_t n = pf.length > 0 ? pf.length : 0;
        if (pf.type == PluginFieldType::kINT32 && pf.data != nullptr) {
            f.type = FieldType::Int32;
            auto const* p = static_cast<int32_t const*>(pf.data);
            f.values.assign(p, p + n);
        } else if (pf.type == PluginFieldType::kINT64 && pf.data != nullptr) {
            f.type = FieldType::Int64;
            auto const* p = static_cast<int64_t const*>(pf.data);
            f.values.assign(p, p + n);
        } else {
            f.type = FieldType::Other;
        }
        out.push_back(std::move(f));
    }
    return out;
}


class DfcPlugin final : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
public:
    // buildPhase: created by TensorRT for building an engine (TensorRTPhase::kBUILD; clones
    // inherit it). Such an object never communicates: its enqueue is TensorRT timing it.
    DfcPlugin(OpAttrs a, bool buildPhase) : attrs_(std::move(a)), buildPhase_(buildPhase) { refreshFields(); }
    DfcPlugin(DfcPlugin const& o) : attrs_(o.attrs_), buildPhase_(o.buildPhase_) { refreshFields(); }
    DfcPlugin& operator=(DfcPlugin const&) = delete;
    ~DfcPlugin() override = default;

    // IPluginV3
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
        switch (type) {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }
    IPluginV3* clone() noexcept override {
        try {
            return new DfcPlugin(*this);
        } catch (...) {
            return nullptr;
        }
    }

    // IPluginV3OneCore
    AsciiChar const* getPluginName() const noexcept override { return opName(attrs_.kind); }
    AsciiChar const* getPluginVersion() const noexcept override { return DFC_OP_VERSION; }
    AsciiChar const* getPluginNamespace() const noexcept override { return DFC_DOMAIN; }

    // IPluginV3OneBuild
    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*,
        int32_t nbOutputs) noexcept override {
        try {
            if (nbInputs != 1 || nbOutputs != 1) return fail("expects one input and one output");
            AxisRule rule;
            std::string err = axisRule(attrs_, in[0].desc.dims.nbDims, rule);
            return err.empty() ? 0 : fail(err);
        } catch (...) {
            return failed("configurePlugin", std::current_exception());
        }
    }
    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
        int32_t nbInputs) const noexcept override {
        if (nbOutputs != 1 || nbInputs != 1) return -1;
        outputTypes[0] = inputTypes[0];
        return 0;
    }
    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* outputs,
        int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override {
        try {
            if (nbInputs != 1 || nbOutputs != 1) return fail("expects one input and one output");
            AxisRule rule;
            std::string err = axisRule(attrs_, inputs[0].nbDims, rule);
            if (!err.empty()) return fail(err);
            outputs[0] = inputs[0];
            if (rule.kind == AxisRule::Add) {
                IDimensionExpr const* add = exprBuilder.constant(rule.value);
                IDimensionExpr const* sum =
                    add != nullptr ? exprBuilder.operation(DimensionOperation::kSUM, *inputs[0].d[rule.axis], *add)
                                   : nullptr;
                if (sum == nullptr) return fail("IExprBuilder returned no expression");
                outputs[0].d[rule.axis] = sum;
            } else if (rule.kind == AxisRule::Set) {
                IDimensionExpr const* c = exprBuilder.constant(rule.value);
                if (c == nullptr) return fail("IExprBuilder returned no expression");
                outputs[0].d[rule.axis] = c;
            }
            return 0;
        } catch (...) {
            return failed("getOutputShapes", std::current_exception());
        }
    }
    bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override {
        if (nbInputs != 1 || nbOutputs != 1 || pos < 0 || pos > 1) return false;
        PluginTensorDesc const& d = inOut[pos].desc;
        if (d.format != TensorFormat::kLINEAR) return false;
        if (pos == 1) return d.type == inOut[0].desc.type;
        if (attrs_.kind == OpKind::Stats) return d.type == DataType::kFLOAT;
        return d.type == DataType::kFLOAT || d.type == DataType::kHALF || d.type == DataType::kBF16;
    }
    int32_t getNbOutputs() const noexcept override { return 1; }

    // IPluginV3OneRuntime
    int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*, int32_t nbOutputs) noexcept
        override {
        try {
            if (nbInputs != 1 || nbOutputs != 1) return fail("expects one input and one output");
            std::vector<int64_t> dims(in[0].dims.d, in[0].dims.d + in[0].dims.nbDims), out;
            std::string err = outputShape(attrs_, dims, out);
            return err.empty() ? 0 : fail(err);
        } catch (...) {
            return failed("onShapeChange", std::current_exception());
        }
    }
    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
        void* const* outputs, void*, cudaStream_t stream) noexcept override {
        try {
            std::vector<int64_t> dims(inputDesc[0].dims.d, inputDesc[0].dims.d + inputDesc[0].dims.nbDims);
            int32_t dtype = static_cast<int32_t>(inputDesc[0].type);
            std::string why;
            bool noneExists = false;
            Context* ctx = buildPhase_ ? nullptr : currentContext(why, &noneExists);
            if (ctx == nullptr) {
                // Several contexts and none current: a runtime error (a local result would be wrong).
                if (!buildPhase_ && !noneExists) return fail(why);
                // TensorRT timing the plugin while it builds an engine, or no context in the
                // process: local-only, no communication (one rank timing alone must not start a
                // collective its peers never join).
                noteLocalOnlyOnce(buildPhase_);
                Status st = runLocalOnly(attrs_, dims, dtype, inputs[0], outputs[0], stream);
                return st.ok() ? 0 : fail(st.message);
            }
            Status st = ctx->run(attrs_, dims, dtype, inputs[0], outputs[0], stream);
            return st.ok() ? 0 : fail(st.message);
        } catch (...) {
            return failed("enqueue", std::current_exception());
        }
    }
    IPluginV3* attachToContext(IPluginResourceContext*) noexcept override { return clone(); }
    PluginFieldCollection const* getFieldsToSerialize() noexcept override {
        try {
            refreshFields();
            return &collection_;
        } catch (...) {
            collection_.nbFields = 0;
            collection_.fields = nullptr;
            failed("getFieldsToSerialize", std::current_exception());
            return nullptr;
        }
    }

private:
    // Logs `msg` labelled with the operator and slot; -1 (TensorRT's failure code). Never throws.
    int32_t fail(std::string const& msg) const noexcept {
        try {
            std::string label = std::string(opName(attrs_.kind)) + " (slot " + std::to_string(attrs_.slot) + ")";
            logError(msg.find(opName(attrs_.kind)) == std::string::npos ? label + ": " + msg : msg);
        } catch (...) {
        }
        return -1;
    }
    // An exception caught in a noexcept entry point: logged, -1.
    int32_t failed(char const* where, std::exception_ptr e) const noexcept {
        try {
            std::rethrow_exception(e);
        } catch (std::exception const& ex) {
            try {
                return fail(std::string("exception in ") + where + ": " + ex.what());
            } catch (...) {
            }
        } catch (...) {
            try {
                return fail(std::string("unknown exception in ") + where);
            } catch (...) {
            }
        }
        return -1;
    }
    // One message per process and cause: informational while building, a warning at run time.
    static void noteLocalOnlyOnce(bool buildPhase) noexcept {
        static std::once_flag build, runtime;
        try {
            if (buildPhase)
                std::call_once(build, [] {
                    logMessage(ILogger::Severity::kINFO,
                        "building an engine: the exchange plugins run local-only while TensorRT times them");
                });
            else
                std::call_once(runtime, [] {
                    logMessage(ILogger::Severity::kWARNING,
                        "no dfc context in this process: the exchange plugins run local-only (no communication, "
                        "zero rows for peers' data); create one with dfc_context_create before running engines");
                });
        } catch (...) {
        }
    }
    void refreshFields() {
        hostFields_ = attrsToFields(attrs_);
        storage_.clear();
        for (Field const& f : hostFields_) storage_.emplace_back(f.values.begin(), f.values.end());
        fields_.clear();
        for (size_t i = 0; i < hostFields_.size(); ++i)
            fields_.emplace_back(hostFields_[i].name.c_str(), storage_[i].data(), PluginFieldType::kINT32,
                static_cast<int32_t>(storage_[i].size()));
        collection_.nbFields = static_cast<int32_t>(fields_.size());
        collection_.fields = fields_.data();
    }

    OpAttrs attrs_;
    bool buildPhase_ = false;
    std::vector<Field> hostFields_;
    std::vector<std::vector<int32_t>> storage_;
    std::vector<PluginField> fields_;
    PluginFieldCollection collection_{};
};

class DfcCreator final : public IPluginCreatorV3One {
public:
    explicit DfcCreator(OpKind kind) : kind_(kind) {
        fields_.emplace_back(DFC_ATTR_SLOT, nullptr, PluginFieldType::kINT32, 1);
        if (kind != OpKind::Stats) fields_.emplace_back(DFC_ATTR_AXIS, nullptr, PluginFieldType::kINT32, 1);
        if (kind == OpKind::Halo) {
            fields_.emplace_back(DFC_ATTR_TOP, nullptr, PluginFieldType::kINT32, 1);
            fields_.emplace_back(DFC_ATTR_BOTTOM, nullptr, PluginFieldType::kINT32, 1);
        }
        if (kind == OpKind::Gather) fields_.emplace_back(DFC_ATTR_PARTS, nullptr, PluginFieldType::kINT32, 0);
        names_.nbFields = static_cast<int32_t>(fields_.size());
        names_.fields = fields_.data();
    }
    IPluginV3* createPlugin(AsciiChar const* name, PluginFieldCollection const* fc, TensorRTPhase phase) noexcept
        override {
        try {
            OpAttrs a;
            std::string err = attrsFromFields(kind_, fromCollection(fc), a);
            if (!err.empty()) {
                logError(std::string(name != nullptr ? name : "?") + ": " + err);
                return nullptr;
            }
            return new DfcPlugin(a, phase == TensorRTPhase::kBUILD);
        } catch (std::exception const& e) {
            logError(std::string("createPlugin: ") + e.what());
            return nullptr;
        } catch (...) {
            logError("createPlugin: unknown exception");
            return nullptr;
        }
    }
    PluginFieldCollection const* getFieldNames() noexcept override { return &names_; }
    AsciiChar const* getPluginName() const noexcept override { return opName(kind_); }
    AsciiChar const* getPluginVersion() const noexcept override { return DFC_OP_VERSION; }
    AsciiChar const* getPluginNamespace() const noexcept override { return DFC_DOMAIN; }

private:
    OpKind kind_;
    std::vector<PluginField> fields_;
    PluginFieldCollection names_{};
};

}  // namespace
}  // namespace dfc

extern "C" {

// Neither entry point lets an exception out (TensorRT calls them through a C interface).
__attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept {
    try {
        std::lock_guard<std::mutex> lk(dfc::gLogMu);
        dfc::gLoggerFinder = finder;
    } catch (...) {
    }
}

__attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(
    int32_t& nbCreators) noexcept {
    try {
        static dfc::DfcCreator halo(dfc::OpKind::Halo);
        static dfc::DfcCreator stats(dfc::OpKind::Stats);
        static dfc::DfcCreator gather(dfc::OpKind::Gather);
        static nvinfer1::IPluginCreatorInterface* const creators[] = {&halo, &stats, &gather};
        nbCreators = 3;
        return creators;
    } catch (...) {
        nbCreators = 0;
        return nullptr;
    }
}

}  // extern "C"
