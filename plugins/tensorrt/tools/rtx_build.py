"""Builds a TensorRT-RTX engine from a one-node ONNX model holding a dfc exchange operator,
with libdfc_trt_plugins.so loaded into the plugin registry (the RTX builder runs without a
GPU). Usage: rtx_probe.py <libdfc_trt_plugins.so> <out_dir> [halo|gather|stats]
Prints each stage; exit 0 when the engine was built and written."""
import os
import sys

import onnx
from onnx import TensorProto, helper


def model(op: str) -> onnx.ModelProto:
    if op == "halo":
        node = helper.make_node("DfcHaloExchange", ["x"], ["y"], domain="dfc", slot=0, axis=2, top=1, bottom=1)
        xin, yout = [1, 4, 8, 16], [1, 4, 10, 16]
    elif op == "gather":
        node = helper.make_node("DfcPatchAllGather", ["x"], ["y"], domain="dfc", slot=1, axis=1, parts=[32, 32])
        xin, yout = [1, 32, 8], [1, 64, 8]
    else:
        node = helper.make_node("DfcStatsAllReduce", ["x"], ["y"], domain="dfc", slot=2)
        xin, yout = [1, 8, 2], [1, 8, 2]
    graph = helper.make_graph(
        [node], "dfc_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, xin)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, yout)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("dfc", 1)])
    m.ir_version = 8
    return m


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[1] not in ("probe", "build"):
        print(__doc__, file=sys.stderr)
        return 2
    lib = sys.argv[2]
    fp16 = "--fp16" in sys.argv
    if sys.argv[1] == "probe":
        out = sys.argv[3]
        op = sys.argv[4] if len(sys.argv) > 4 else "halo"
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, f"probe_{op}.onnx")
        onnx.save(model(op), path)
        plan = os.path.join(out, f"probe_{op}.plan")
    else:
        if len(sys.argv) < 5:
            print(__doc__, file=sys.stderr)
            return 2
        path, plan = sys.argv[3], sys.argv[4]
    import tensorrt_rtx_bindings as trt

    print("tensorrt-rtx", trt.__version__, flush=True)
    logger = trt.Logger(trt.Logger.VERBOSE if os.environ.get("DFC_PROBE_VERBOSE") else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    registry = builder.get_plugin_registry()
    handle = registry.load_library(lib)
    print("load_library:", "ok" if handle is not None else "failed", flush=True)
    names = [(c.name, c.plugin_namespace) for c in registry.all_creators]
    print("dfc creators:", [n for n in names if n[1] == "dfc"], flush=True)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    print("parsing", path, flush=True)
    ok = parser.parse_from_file(path)
    print("parse:", ok, flush=True)
    for i in range(parser.num_errors):
        print("  parser error:", parser.get_error(i), flush=True)
    if not ok:
        return 1
    for i in range(network.num_outputs):
        t = network.get_output(i)
        print("output", t.name, tuple(t.shape), t.dtype, flush=True)
    config = builder.create_builder_config()
    if fp16 and hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)
    engine = builder.build_serialized_network(network, config)
    print("build:", "ok" if engine is not None else "failed", flush=True)
    if engine is None:
        return 1
    with open(plan, "wb") as f:
        f.write(engine)
    print("wrote", plan, engine.nbytes, "bytes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
