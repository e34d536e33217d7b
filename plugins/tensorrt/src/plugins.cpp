// The TensorRT IPluginV3 plugins of the three exchange operators and their creators
// (IPluginCreatorV3One), plus the plugin-library entry points (getCreators, setLoggerFinder).
// Plugin objects hold only their attributes; all state lives in the rank's dfc context.
#include <cstdio>
#include <cstring>
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

void logError(std::string const& msg) {
    std::lock_guard<std::mutex> lk(gLogMu);
    ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
    if (logger != nullptr) logger->log(ILogger::Severity::kERROR, ("dfc: " + msg).c_str());
    else std::fprintf(stderr, "dfc: %s\n", msg.c_str());
}

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
    explicit DfcPlugin(OpAttrs a) : attrs_(std::move(a)) { refreshFields(); }
    DfcPlugin(DfcPlugin const& o) : attrs_(o.attrs_) { refreshFields(); }
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
        if (nbInputs != 1 || nbOutputs != 1) return fail("expects one input and one output");
        AxisRule rule;
        std::string err = axisRule(attrs_, in[0].desc.dims.nbDims, rule);
        return err.empty() ? 0 : fail(err);
    }
    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
        int32_t nbInputs) const noexcept override {
        if (nbOutputs != 1 || nbInputs != 1) return -1;
        outputTypes[0] = inputTypes[0];
        return 0;
    }
    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* outputs,
        int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override {
        if (nbInputs != 1 || nbOutputs != 1) return fail("expects one input and one output");
        AxisRule rule;
        std::string err = axisRule(attrs_, inputs[0].nbDims, rule);
        if (!err.empty()) return fail(err);
        outputs[0] = inputs[0];
        if (rule.kind == AxisRule::Add) {
            IDimensionExpr const* add = exprBuilder.constant(rule.value);
            outputs[0].d[rule.axis] = exprBuilder.operation(DimensionOperation::kSUM, *inputs[0].d[rule.axis], *add);
        } else if (rule.kind == AxisRule::Set) {
            outputs[0].d[rule.axis] = exprBuilder.constant(rule.value);
        }
        return 0;
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
        if (nbInputs != 1 || nbOutputs != 1) return fail("expects one input and one output");
        std::vector<int64_t> dims(in[0].dims.d, in[0].dims.d + in[0].dims.nbDims), out;
        std::string err = outputShape(attrs_, dims, out);
        return err.empty() ? 0 : fail(err);
    }
    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
        void* const* outputs, void*, cudaStream_t stream) noexcept override {
        try {
            std::string why;
            Context* ctx = currentContext(why);
            if (ctx == nullptr) return fail(why);
            std::vector<int64_t> dims(inputDesc[0].dims.d, inputDesc[0].dims.d + inputDesc[0].dims.nbDims);
            Status st = ctx->run(attrs_, dims, static_cast<int32_t>(inputDesc[0].type), inputs[0], outputs[0], stream);
            return st.ok() ? 0 : fail(st.message);
        } catch (...) {
            return fail("exception in enqueue");
        }
    }
    IPluginV3* attachToContext(IPluginResourceContext*) noexcept override { return clone(); }
    PluginFieldCollection const* getFieldsToSerialize() noexcept override {
        refreshFields();
        return &collection_;
    }

private:
    int32_t fail(std::string const& msg) const {
        std::string label = std::string(opName(attrs_.kind)) + " (slot " + std::to_string(attrs_.slot) + ")";
        logError(msg.find(opName(attrs_.kind)) == std::string::npos ? label + ": " + msg : msg);
        return -1;
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
    IPluginV3* createPlugin(AsciiChar const* name, PluginFieldCollection const* fc, TensorRTPhase) noexcept override {
        try {
            OpAttrs a;
            std::string err = attrsFromFields(kind_, fromCollection(fc), a);
            if (!err.empty()) {
                logError(std::string(name != nullptr ? name : "?") + ": " + err);
                return nullptr;
            }
            return new DfcPlugin(a);
        } catch (...) {
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

__attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
    std::lock_guard<std::mutex> lk(dfc::gLogMu);
    dfc::gLoggerFinder = finder;
}

__attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    static dfc::DfcCreator halo(dfc::OpKind::Halo);
    static dfc::DfcCreator stats(dfc::OpKind::Stats);
    static dfc::DfcCreator gather(dfc::OpKind::Gather);
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&halo, &stats, &gather};
    nbCreators = 3;
    return creators;
}

}  // extern "C"
