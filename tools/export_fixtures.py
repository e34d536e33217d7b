#!/usr/bin/env python3
"""Generate the tiny diffusion ONNX fixtures used by dfc's tests.

Every model is a real diffusers architecture (``UNet2DConditionModel`` /
``AutoencoderKL``) built from a hand-written, deliberately tiny config with
*random* weights (``torch.manual_seed(0)`` before each model is constructed; no
model hub is contacted).  Each model is exported with the TorchScript ONNX
exporter (``torch.onnx.export(..., dynamo=False)``), checked with
``onnx.checker.check_model(full_check=True)``, and run with onnxruntime (CPU
execution provider, one intra-op thread) on fixed-seed inputs; inputs and
reference outputs are stored next to the model as ``<name>.io.npz`` (keys are the
ONNX input / output names, uncompressed zip written with fixed timestamps so the
file is byte-reproducible).

Fixtures written under ``--out`` (default ``models``):

* ``sd15_tiny.onnx``            SD1.5-style UNet, static shapes, opset 17
                                (GroupNorm = Reshape/InstanceNormalization/Reshape/Mul/Add)
* ``sd15_tiny_dynamic.onnx``    same weights, dynamic batch/height/width/sequence
* ``sd15_tiny_fp16.onnx``       fp16 version (onnxruntime.transformers.float16 converter,
                                the maintained fork of onnxconverter-common's; fp16 I/O)
* ``sd15_tiny_external/model.onnx`` + ``model.onnx.data``  sd15_tiny with all
                                initializers stored as external data in one file
* ``sdxl_tiny.onnx``            SDXL-style UNet (text_time added conditioning,
                                linear proj_in/out), static, opset 21 with GroupNorm as
                                the ONNX ``GroupNormalization``-21 op (graph rewrite,
                                verified numerically against the exported pattern)
* ``sdxl_tiny_dynamic.onnx``    same weights, dynamic axes, GroupNormalization-21
* ``sdxl_tiny_fp16.onnx``       fp16 version of sdxl_tiny
* ``vae_decoder_tiny.onnx``     AutoencoderKL decoder (post_quant_conv + decoder), static

Regenerate everything (from the repository root)::

    bash tools/setup_export_env.sh            # once: creates .venv-export
    .venv-export/bin/python tools/export_fixtures.py --out models

The run is deterministic: re-running it gives byte-identical ``.onnx`` files for
the same package versions (see tools/requirements-export.txt).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections import Counter

import numpy as np

from npz_io import save_npz

SEED = 0
BATCH = 2  # CFG pair (uncond, cond)
LATENT_HW = 32
SEQ = 8
CROSS_DIM = 32
SDXL_TEXT_EMBED_DIM = 32
SDXL_ADD_TIME_DIM = 8
TIMESTEP_VALUE = 500.0
# time_ids = (orig_h, orig_w, crop_top, crop_left, target_h, target_w), SDXL style
TIME_IDS = [256.0, 256.0, 0.0, 0.0, 256.0, 256.0]

SD15_CONFIG = dict(
    sample_size=LATENT_HW,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 32, 40),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    cross_attention_dim=CROSS_DIM,
    attention_head_dim=8,  # diffusers naming: this is the number of heads (SD1.5 uses 8)
    norm_num_groups=8,
    use_linear_projection=False,  # SD1.5: 1x1 Conv proj_in / proj_out
)

SDXL_CONFIG = dict(
    sample_size=LATENT_HW,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(16, 24, 40),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    cross_attention_dim=CROSS_DIM,
    attention_head_dim=(2, 3, 5),  # number of heads per level -> head dim 8 at both attention levels
    transformer_layers_per_block=(1, 1, 2),
    norm_num_groups=8,
    use_linear_projection=True,  # SDXL: Linear proj_in / proj_out
    addition_embed_type="text_time",
    addition_time_embed_dim=SDXL_ADD_TIME_DIM,
    projection_class_embeddings_input_dim=SDXL_TEXT_EMBED_DIM + 6 * SDXL_ADD_TIME_DIM,
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
)

UNET_DYNAMIC_AXES = {
    "sample": {0: "batch", 2: "height", 3: "width"},
    "encoder_hidden_states": {0: "batch", 1: "sequence"},
    "text_embeds": {0: "batch"},
    "time_ids": {0: "batch"},
    "out_sample": {0: "batch", 2: "height", 3: "width"},
}


# --------------------------------------------------------------------------- utils
def log(*a):
    print(*a, flush=True)


def param_count(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def randomize_norms(module, torch) -> None:
    """Give GroupNorm / LayerNorm non-trivial affine params (defaults are 1 / 0),
    so that the per-channel scale/bias of the exported norm patterns matters."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(1.0 + 0.1 * torch.randn_like(m.weight))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(0.1 * torch.randn_like(m.bias))


def op_histogram(model) -> dict:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def default_opset(model) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    raise ValueError("no default-domain opset")


# --------------------------------------------------------------------------- models
def build_models(torch):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    class SD15Wrapper(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    class SDXLWrapper(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
            return self.unet(
                sample,
                timestep,
                encoder_hidden_states,
                added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
                return_dict=False,
            )[0]

    class VAEDecoderWrapper(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, latent_sample):
            return self.vae.decode(latent_sample, return_dict=False)[0]

    torch.manual_seed(SEED)
    sd15 = UNet2DConditionModel(**SD15_CONFIG)
    randomize_norms(sd15, torch)
    sd15.eval()

    torch.manual_seed(SEED)
    sdxl = UNet2DConditionModel(**SDXL_CONFIG)
    randomize_norms(sdxl, torch)
    sdxl.eval()

    torch.manual_seed(SEED)
    vae = AutoencoderKL(**VAE_CONFIG)
    randomize_norms(vae, torch)
    vae.eval()
    vae_params = param_count(vae.decoder) + param_count(vae.post_quant_conv)

    return {
        "sd15": (SD15Wrapper(sd15).eval(), param_count(sd15)),
        "sdxl": (SDXLWrapper(sdxl).eval(), param_count(sdxl)),
        "vae": (VAEDecoderWrapper(vae).eval(), vae_params),
    }


def make_inputs(kind: str) -> dict:
    """Fixed-seed fp32 inputs at the static size (numpy; keys = ONNX input names)."""
    rng = np.random.default_rng(SEED)
    if kind == "vae":
        return {"latent_sample": rng.standard_normal((1, 4, LATENT_HW, LATENT_HW)).astype(np.float32)}
    inputs = {
        "sample": rng.standard_normal((BATCH, 4, LATENT_HW, LATENT_HW)).astype(np.float32),
        "timestep": np.array([TIMESTEP_VALUE], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((BATCH, SEQ, CROSS_DIM)).astype(np.float32),
    }
    if kind == "sdxl":
        inputs["text_embeds"] = rng.standard_normal((BATCH, SDXL_TEXT_EMBED_DIM)).astype(np.float32)
        inputs["time_ids"] = np.tile(np.array(TIME_IDS, dtype=np.float32), (BATCH, 1))
    return inputs


OUTPUT_NAMES = {"sd15": ["out_sample"], "sdxl": ["out_sample"], "vae": ["sample"]}


# --------------------------------------------------------------------------- export
def torch_export(torch, onnx, wrapper, kind, opset, dynamic, fold=True):
    inputs = make_inputs(kind)
    names = list(inputs)
    args = tuple(torch.from_numpy(inputs[n]) for n in names)
    out_names = OUTPUT_NAMES[kind]
    dyn = None
    if dynamic:
        dyn = {k: v for k, v in UNET_DYNAMIC_AXES.items() if k in names or k in out_names}
    kwargs = dict(
        input_names=names,
        output_names=out_names,
        opset_version=opset,
        do_constant_folding=fold,
        dynamic_axes=dyn,
    )
    import inspect

    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    with tempfile.TemporaryDirectory() as td:
        path = os.path.join(td, "m.onnx")
        with torch.no_grad():
            torch.onnx.export(wrapper, args, path, **kwargs)
        model = onnx.load(path)
    with torch.no_grad():
        ref = wrapper(*args).numpy()
    return model, ref


# --------------------------------------------------------------------------- GroupNorm rewrite
def _const_value(model, name, numpy_helper):
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def rewrite_groupnorm(model, onnx):
    """Replace torch's GroupNorm export pattern

        x -> Reshape([0, G, -1]) -> InstanceNormalization(scale=1, B=0, eps)
          -> Reshape(Shape(x)) -> Mul(gamma[C,1,1]) -> Add(beta[C,1,1])

    by a single ``GroupNormalization(x, gamma[C], beta[C], epsilon, num_groups=G)``
    (opset 21: per-channel scale/bias) and raise the default-domain opset to 21.
    The model must have been exported at opset >= 20 (ops are unchanged 20 -> 21
    except for added types), so only GroupNormalization changes semantics.
    Returns (new_model, number_of_rewrites)."""
    from onnx import helper, numpy_helper

    assert default_opset(model) >= 20, "export the pattern model at opset 20 first"
    g = model.graph
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in g.node for o in n.output}
    graph_outputs = {o.name for o in g.output}

    def only_consumer(name, op):
        cs = consumers.get(name, [])
        if len(cs) == 1 and cs[0].op_type == op and name not in graph_outputs:
            return cs[0]
        return None

    remove = set()
    replacements = {}  # id(first node) -> new node
    new_inits = []
    count = 0
    for inorm in g.node:
        if inorm.op_type != "InstanceNormalization":
            continue
        r1 = producer.get(inorm.input[0])
        if r1 is None or r1.op_type != "Reshape":
            continue
        shape1 = _const_value(model, r1.input[1], numpy_helper)
        scale = _const_value(model, inorm.input[1], numpy_helper)
        bias0 = _const_value(model, inorm.input[2], numpy_helper)
        if shape1 is None or scale is None or bias0 is None:
            continue
        if list(shape1) != [0, scale.shape[0], -1] or not np.all(scale == 1) or not np.all(bias0 == 0):
            continue
        r2 = only_consumer(inorm.output[0], "Reshape")
        if r2 is None:
            continue
        mul = only_consumer(r2.output[0], "Mul")
        if mul is None:
            continue
        add = only_consumer(mul.output[0], "Add")
        if add is None:
            continue
        gamma_name = mul.input[1] if mul.input[0] == r2.output[0] else mul.input[0]
        beta_name = add.input[1] if add.input[0] == mul.output[0] else add.input[0]
        gamma = _const_value(model, gamma_name, numpy_helper)
        beta = _const_value(model, beta_name, numpy_helper)
        if gamma is None or beta is None or gamma.ndim != 3 or beta.ndim != 3:
            continue
        if gamma.shape[1:] != (1, 1) or beta.shape[1:] != (1, 1):
            continue
        x = r1.input[0]
        eps = next((a.f for a in inorm.attribute if a.name == "epsilon"), 1e-5)
        groups = int(scale.shape[0])
        base = inorm.name.rsplit("/", 1)[0] if "/" in inorm.name else inorm.name
        gn_name = base + "/GroupNormalization"
        sname, bname = gn_name + "_scale", gn_name + "_bias"
        new_inits.append(numpy_helper.from_array(gamma.reshape(-1).astype(gamma.dtype), sname))
        new_inits.append(numpy_helper.from_array(beta.reshape(-1).astype(beta.dtype), bname))
        gn = helper.make_node(
            "GroupNormalization",
            [x, sname, bname],
            [add.output[0]],
            name=gn_name,
            epsilon=float(eps),
            num_groups=groups,
        )
        replacements[id(r1)] = gn
        remove.update(id(n) for n in (r1, inorm, r2, mul, add))
        count += 1

    new_nodes = []
    for n in g.node:
        if id(n) in replacements:
            new_nodes.append(replacements[id(n)])
        elif id(n) not in remove:
            new_nodes.append(n)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    _dead_code_elim(model)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 21
    model.ir_version = max(model.ir_version, 10)  # opset 21 belongs to IR version 10
    return model, count


def _dead_code_elim(model):
    g = model.graph
    live = {o.name for o in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in live for o in n.output):
            keep.append(n)
            live.update(i for i in n.input if i)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    inits = [t for t in g.initializer if t.name in live]
    del g.initializer[:]
    g.initializer.extend(inits)
    vis = [v for v in g.value_info if v.name in live]
    del g.value_info[:]
    g.value_info.extend(vis)


# --------------------------------------------------------------------------- fp16
def to_fp16(model, onnx, ort, keep_io_types=False):
    """fp16 conversion with fp16 I/O (fp32 I/O and Casts at the boundary when
    ``keep_io_types``), using onnxruntime's float16 converter
    (``onnxruntime.transformers.float16``, the maintained fork of
    onnxconverter-common's converter that ORT's own Stable Diffusion fp16
    pipeline uses; unlike onnxconverter-common 1.16 it also retargets
    ``Cast(to=FLOAT)`` nodes and keeps Resize's scales input fp32).  Ops for which
    onnxruntime's CPU EP has no fp16 kernel are found by trying to create a
    session and are added to op_block_list (they then run in fp32 between Casts).
    Returns (fp16_model, sorted list of ops added on top of the default block list)."""
    from onnxruntime.transformers import float16

    extra = []
    for _ in range(64):
        block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(extra))
        m16 = float16.convert_float_to_float16(
            onnx.ModelProto.FromString(model.SerializeToString()),
            keep_io_types=keep_io_types,
            op_block_list=block,
        )
        _topo_sort(m16.graph)
        try:
            make_session(m16.SerializeToString(), ort)
            return m16, sorted(extra)
        except Exception as e:  # onnxruntime NOT_IMPLEMENTED: no fp16 kernel for an op
            m = re.search(r"implementation for (\w+)\(", str(e))
            if not m or m.group(1) in extra:
                raise
            extra.append(m.group(1))
    raise RuntimeError("fp16 conversion did not converge")


def _topo_sort(g):
    """Stable topological sort of a graph's nodes (the fp16 converter appends
    Cast nodes at the end; ONNX requires producers before consumers)."""
    avail = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending = list(g.node)
    ordered = []
    while pending:
        rest = []
        progressed = False
        for n in pending:
            if all(i in avail for i in n.input):
                ordered.append(n)
                avail.update(n.output)
                progressed = True
            else:
                rest.append(n)
        if not progressed:
            raise RuntimeError("graph has a cycle or a dangling input")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)


# --------------------------------------------------------------------------- ORT
def make_session(model_or_path, ort):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model_or_path, so, providers=["CPUExecutionProvider"])


def run_ort(model_or_path, inputs, ort):
    sess = make_session(model_or_path, ort)
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, inputs)
    return dict(zip(names, outs))


def check(model_or_path, onnx):
    try:
        onnx.checker.check_model(model_or_path, full_check=True)
        return "full_check"
    except TypeError:
        onnx.checker.check_model(model_or_path)
        return "check_model"


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Example: .venv-export/bin/python tools/export_fixtures.py --out models",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--out", default="models", help="output directory (default: models)")
    ap.add_argument("--quiet", action="store_true", help="do not print op histograms")
    args = ap.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore")
    import onnx
    import onnxruntime as ort
    import torch

    torch.set_num_threads(1)
    import diffusers

    out = args.out
    os.makedirs(out, exist_ok=True)
    log(f"torch {torch.__version__}, diffusers {diffusers.__version__}, onnx {onnx.__version__}, "
        f"onnxruntime {ort.__version__}, numpy {np.__version__}")

    models = build_models(torch)
    summary = []

    def finish(name, model, kind, params, how, ref=None, fp16=False, path=None, tol=None):
        if path is None:
            path = os.path.join(out, name + ".onnx")
            onnx.save_model(model, path)
        chk = check(path, onnx)
        inputs = make_inputs(kind)
        if fp16:
            inputs = {k: v.astype(np.float16) for k, v in inputs.items()}
        outs = run_ort(path, inputs, ort)
        npz = os.path.splitext(path)[0] + ".io.npz"
        save_npz(npz, {**inputs, **outs})
        first = next(iter(outs.values()))
        msg = f"{name}: {chk} ok, opset {default_opset(model)}, {os.path.getsize(path)} bytes, params {params}"
        if ref is not None:
            err = float(np.max(np.abs(first.astype(np.float32) - ref.astype(np.float32))))
            msg += f", max|ort-ref|={err:.3g}"
            if tol is not None and err > tol:
                raise RuntimeError(f"{name}: ORT output differs from reference by {err} > {tol}")
        log(msg)
        summary.append((name, path, params, how))
        return outs

    # ---- SD1.5 family
    sd15, sd15_params = models["sd15"]
    m, ref = torch_export(torch, onnx, sd15, "sd15", 17, dynamic=False)
    sd15_model = m
    outs = finish("sd15_tiny", m, "sd15", sd15_params, "torch export opset 17", ref=ref, tol=1e-4)
    sd15_ort = outs["out_sample"]
    if not args.quiet:
        log("  sd15_tiny ops:", op_histogram(m))

    m, _ = torch_export(torch, onnx, sd15, "sd15", 17, dynamic=True)
    o = finish("sd15_tiny_dynamic", m, "sd15", sd15_params, "torch export opset 17, dynamic axes",
               ref=sd15_ort, tol=1e-5)
    _check_dynamic(os.path.join(out, "sd15_tiny_dynamic.onnx"), "sd15", ort)

    m16, extra = to_fp16(sd15_model, onnx, ort)
    finish("sd15_tiny_fp16", m16, "sd15", sd15_params,
           f"fp16 via onnxruntime.transformers.float16 (ORT CPU EP inserts fp32 fallbacks itself); extra fp32-kept ops: {extra}", ref=sd15_ort, fp16=True)

    ext_dir = os.path.join(out, "sd15_tiny_external")
    os.makedirs(ext_dir, exist_ok=True)
    ext_path = os.path.join(ext_dir, "model.onnx")
    data_path = ext_path + ".data"
    if os.path.exists(data_path):
        os.remove(data_path)  # onnx appends to an existing data file
    ext = onnx.ModelProto.FromString(sd15_model.SerializeToString())
    onnx.save_model(ext, ext_path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    finish("sd15_tiny_external", ext, "sd15", sd15_params, "sd15_tiny with external data",
           ref=sd15_ort, tol=0.0, path=ext_path)

    # ---- SDXL family (exported at opset 20, GroupNorm pattern rewritten to GroupNormalization-21)
    sdxl, sdxl_params = models["sdxl"]
    pat, ref = torch_export(torch, onnx, sdxl, "sdxl", 20, dynamic=False)
    pat_out = run_ort(pat.SerializeToString(), make_inputs("sdxl"), ort)["out_sample"]
    gn, n = rewrite_groupnorm(onnx.ModelProto.FromString(pat.SerializeToString()), onnx)
    log(f"  sdxl: rewrote {n} GroupNorm patterns to GroupNormalization-21")
    outs = finish("sdxl_tiny", gn, "sdxl", sdxl_params,
                  f"torch export opset 20 + GroupNormalization-21 rewrite ({n} nodes)", ref=pat_out, tol=1e-5)
    sdxl_ort = outs["out_sample"]
    log(f"  sdxl_tiny: max|ort(pattern)-torch| = {float(np.max(np.abs(pat_out - ref))):.3g}")
    if not args.quiet:
        log("  sdxl_tiny ops:", op_histogram(gn))
    sdxl_model = gn

    pat, _ = torch_export(torch, onnx, sdxl, "sdxl", 20, dynamic=True)
    gn, n = rewrite_groupnorm(pat, onnx)
    finish("sdxl_tiny_dynamic", gn, "sdxl", sdxl_params,
           f"torch export opset 20, dynamic axes + GroupNormalization-21 rewrite ({n} nodes)", ref=sdxl_ort, tol=1e-5)
    _check_dynamic(os.path.join(out, "sdxl_tiny_dynamic.onnx"), "sdxl", ort)

    m16, extra = to_fp16(sdxl_model, onnx, ort)
    finish("sdxl_tiny_fp16", m16, "sdxl", sdxl_params,
           f"fp16 via onnxruntime.transformers.float16 (ORT CPU EP inserts fp32 fallbacks itself); extra fp32-kept ops: {extra}", ref=sdxl_ort, fp16=True)

    # ---- VAE decoder
    vae, vae_params = models["vae"]
    m, ref = torch_export(torch, onnx, vae, "vae", 17, dynamic=False)
    finish("vae_decoder_tiny", m, "vae", vae_params, "torch export opset 17", ref=ref, tol=1e-4)

    log("\nfixtures:")
    for name, path, params, how in summary:
        log(f"  {path}  {os.path.getsize(path)} bytes  params={params}  ({how})")
    return 0


def _check_dynamic(path, kind, ort):
    """Run the dynamic model at a different batch / spatial size as a smoke test."""
    rng = np.random.default_rng(SEED + 1)
    inputs = make_inputs(kind)
    inputs["sample"] = rng.standard_normal((1, 4, 48, 40)).astype(np.float32)
    inputs["encoder_hidden_states"] = rng.standard_normal((1, 5, CROSS_DIM)).astype(np.float32)
    if kind == "sdxl":
        inputs["text_embeds"] = inputs["text_embeds"][:1]
        inputs["time_ids"] = inputs["time_ids"][:1]
    o = run_ort(path, inputs, ort)["out_sample"]
    assert o.shape == (1, 4, 48, 40), o.shape
    assert np.all(np.isfinite(o))


if __name__ == "__main__":
    sys.exit(main())
