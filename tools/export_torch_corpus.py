#!/usr/bin/env python3
"""Write real torch exports of tiny UNets, made the ways users make them, into ``models/corpus/``.

``tools/export_corpus.py`` builds its corpus node by node; this script runs torch's exporters
(and the post-export tools users run on their output) on models with random weights. Each model
is written as ``<name>.onnx`` with ``<name>.io.npz`` beside it (inputs under their ONNX names,
then the reference outputs of onnxruntime, CPU, one intra-op thread; uncompressed, fixed
timestamps), checked with ``onnx.checker.check_model(full_check=True)``, and compared with the
model it came from (torch, or the fp32 export for the fp16 forms).

The tiny SD1.5 ``UNet2DConditionModel`` (config, seed and randomized norms of
``tools/export_fixtures.py``, whose helpers this script imports) is exported as

* ``torch_legacy_op14_b2.onnx``         TorchScript exporter (``dynamo=False``), opset 14,
                                        static batch 2: LayerNorm decomposed, SDPA as MatMul/Softmax
* ``torch_legacy_op17_dyn_nofold.onnx`` TorchScript exporter, opset 17, dynamic batch, height,
                                        width and sequence, ``do_constant_folding=False`` (the
                                        folded dynamic export is ``models/sd15_tiny_dynamic.onnx``)
* ``torch_dynamo_b2.onnx``              the dynamo exporter (``dynamo=True``) at opset 23, static
                                        batch 2: ``Attention``-23 on 4-D heads,
                                        ``GroupNormalization``-21; node metadata other than
                                        ``namespace`` (stack traces with local paths) is dropped
* ``torch_simplified_b2.onnx``          the static opset-17 export with its constants folded by
                                        polygraphy (``surgeon sanitize --fold-constants``)
* ``torch_fp16_fp32io_b2.onnx``         the static opset-17 export in fp16 with fp32 inputs and
                                        outputs (``keep_io_types=True``: Casts at the boundary)
* ``torch_ort_fp16.onnx``               the static opset-17 export through ONNX Runtime's
                                        transformer optimizer (``optimize_model(model_type="unet")``
                                        with the fusions ORT's CPU provider cannot run turned
                                        off), then fp16 (inputs and outputs too): ``com.microsoft``
                                        ``Gelu`` and ``SkipLayerNormalization`` remain, and every
                                        biased Linear on tokens is ``Reshape -> Gemm -> Reshape``
* ``torch_onnxsim_b2.onnx``             the static opset-17 export simplified by onnxsim
                                        (``onnxsim.simplify``, defaults): every biased Linear on
                                        tokens becomes ``Reshape [B, N, ...] -> [B*N, C]``,
                                        ``Gemm``, ``Reshape`` back
* ``torch_ort_fused_gn_mha.onnx``       the dynamic opset-17 export with each attention
                                        rewritten here into one ``com.microsoft``
                                        ``MultiHeadAttention`` (ORT's attention fusion does not
                                        match the diffusers export), then ONNX Runtime's
                                        transformer optimizer with its ``GroupNorm`` and
                                        ``SkipGroupNorm`` fusions on (channels last, between
                                        Transposes), fp32. ORT's CPU provider has no
                                        ``GroupNorm`` kernel, so its reference outputs are those
                                        of the unfused dynamic export on the same inputs (the
                                        same math); the ``MultiHeadAttention`` rewrite is checked
                                        on ORT's CPU provider against that export before fusion

and ``torch_ldm_einsum_b2.onnx`` is an LDM UNet written below in plain torch (CompVis
``openaimodel``: ResBlocks with a time embedding, SpatialTransformers whose attention is
``einsum`` on ``(b h) n d`` tensors, GEGLU feed-forward, one downsample and one upsample),
TorchScript exporter, opset 17, static batch 2.

    .venv-export/bin/python tools/export_torch_corpus.py --out models/corpus
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import Counter

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_fixtures as fx  # noqa: E402
from npz_io import save_npz  # noqa: E402

# The LDM UNet: CompVis openaimodel with model_channels 32, channel_mult (1, 1),
# num_res_blocks 1, attention at both levels, 4 heads, context_dim 32.
LDM_CH = 32
LDM_HEADS = 4
LDM_GROUPS = 8
LDM_TEMB = 4 * LDM_CH

# Metadata the dynamo exporter puts on every node that is kept: the module path.
KEEP_NODE_METADATA = {"namespace"}

# ONNX Runtime fusions whose com.microsoft kernels its CPU provider lacks and dfc refuses.
ORT_REFUSED_FUSIONS = [
    "enable_bias_splitgelu",  # BiasSplitGelu
    "enable_bias_add",  # BiasAdd
    "enable_nhwc_conv",  # NhwcConv
]
# ... and all of them: also the group norms, which dfc rewrites into its own.
ORT_GPU_ONLY_FUSIONS = [
    "enable_group_norm",  # GroupNorm
    "enable_skip_group_norm",  # SkipGroupNorm
    *ORT_REFUSED_FUSIONS,
]


# --------------------------------------------------------------------------- the LDM UNet
def build_ldm(torch):
    """CompVis ``openaimodel``-style UNet (random weights, seeded, randomized norms)."""
    nn = torch.nn
    F = torch.nn.functional

    class GroupNorm32(nn.GroupNorm):
        def forward(self, x):
            return super().forward(x.float()).type(x.dtype)

    def normalization(ch):
        return GroupNorm32(LDM_GROUPS, ch, eps=1e-5)

    def timestep_embedding(t, dim, max_period=10000):
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    class ResBlock(nn.Module):
        def __init__(self, ch, out_ch):
            super().__init__()
            self.in_layers = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
            self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(LDM_TEMB, out_ch))
            self.out_layers = nn.Sequential(
                normalization(out_ch), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out_ch, out_ch, 3, padding=1)
            )
            self.skip_connection = nn.Identity() if ch == out_ch else nn.Conv2d(ch, out_ch, 1)

        def forward(self, x, emb):
            h = self.in_layers(x)
            h = h + self.emb_layers(emb).type(h.dtype)[..., None, None]
            return self.skip_connection(x) + self.out_layers(h)

    class CrossAttention(nn.Module):
        def __init__(self, query_dim, context_dim=None, heads=LDM_HEADS):
            super().__init__()
            context_dim = query_dim if context_dim is None else context_dim
            self.heads = heads
            self.scale = (query_dim // heads) ** -0.5
            self.to_q = nn.Linear(query_dim, query_dim, bias=False)
            self.to_k = nn.Linear(context_dim, query_dim, bias=False)
            self.to_v = nn.Linear(context_dim, query_dim, bias=False)
            self.to_out = nn.Sequential(nn.Linear(query_dim, query_dim), nn.Dropout(0.0))

        def forward(self, x, context=None):
            h = self.heads
            q = self.to_q(x)
            context = x if context is None else context
            k, v = self.to_k(context), self.to_v(context)

            # rearrange(t, 'b n (h d) -> (b h) n d', h=h)
            def split(t):
                b, n, c = t.shape
                return t.reshape(b, n, h, c // h).permute(0, 2, 1, 3).reshape(b * h, n, c // h)

            q, k, v = split(q), split(k), split(v)
            sim = torch.einsum("b i d, b j d -> b i j", q, k) * self.scale
            attn = sim.softmax(dim=-1)
            out = torch.einsum("b i j, b j d -> b i d", attn, v)
            # rearrange(out, '(b h) n d -> b n (h d)', h=h)
            bh, n, d = out.shape
            out = out.reshape(bh // h, h, n, d).permute(0, 2, 1, 3).reshape(bh // h, n, h * d)
            return self.to_out(out)

    class GEGLU(nn.Module):
        def __init__(self, dim_in, dim_out):
            super().__init__()
            self.proj = nn.Linear(dim_in, dim_out * 2)

        def forward(self, x):
            x, gate = self.proj(x).chunk(2, dim=-1)
            return x * F.gelu(gate)

    class BasicTransformerBlock(nn.Module):
        def __init__(self, dim, context_dim):
            super().__init__()
            self.attn1 = CrossAttention(dim)
            self.ff = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim))
            self.attn2 = CrossAttention(dim, context_dim)
            self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

        def forward(self, x, context):
            x = self.attn1(self.norm1(x)) + x
            x = self.attn2(self.norm2(x), context=context) + x
            return self.ff(self.norm3(x)) + x

    class SpatialTransformer(nn.Module):
        def __init__(self, ch, context_dim):
            super().__init__()
            self.norm = normalization(ch)
            self.proj_in = nn.Conv2d(ch, ch, 1)
            self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(ch, context_dim)])
            self.proj_out = nn.Conv2d(ch, ch, 1)

        def forward(self, x, context):
            b, c, hh, ww = x.shape
            x_in = x
            x = self.proj_in(self.norm(x))
            x = x.reshape(b, c, hh * ww).permute(0, 2, 1)  # 'b c h w -> b (h w) c'
            for block in self.transformer_blocks:
                x = block(x, context)
            x = x.permute(0, 2, 1).reshape(b, c, hh, ww)  # 'b (h w) c -> b c h w'
            return self.proj_out(x) + x_in

    class Downsample(nn.Module):
        def __init__(self, ch):
            super().__init__()
            self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

        def forward(self, x):
            return self.op(x)

    class Upsample(nn.Module):
        def __init__(self, ch):
            super().__init__()
            self.conv = nn.Conv2d(ch, ch, 3, padding=1)

        def forward(self, x):
            return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))

    class TimestepEmbedSequential(nn.Sequential):
        def forward(self, x, emb, context):
            for layer in self:
                if isinstance(layer, ResBlock):
                    x = layer(x, emb)
                elif isinstance(layer, SpatialTransformer):
                    x = layer(x, context)
                else:
                    x = layer(x)
            return x

    class UNetModel(nn.Module):
        def __init__(self):
            super().__init__()
            ch, ctx = LDM_CH, fx.CROSS_DIM
            self.time_embed = nn.Sequential(nn.Linear(ch, LDM_TEMB), nn.SiLU(), nn.Linear(LDM_TEMB, LDM_TEMB))
            self.input_blocks = nn.ModuleList([
                TimestepEmbedSequential(nn.Conv2d(4, ch, 3, padding=1)),
                TimestepEmbedSequential(ResBlock(ch, ch), SpatialTransformer(ch, ctx)),
                TimestepEmbedSequential(Downsample(ch)),
                TimestepEmbedSequential(ResBlock(ch, ch), SpatialTransformer(ch, ctx)),
            ])
            self.middle_block = TimestepEmbedSequential(
                ResBlock(ch, ch), SpatialTransformer(ch, ctx), ResBlock(ch, ch)
            )
            self.output_blocks = nn.ModuleList([
                TimestepEmbedSequential(ResBlock(2 * ch, ch), SpatialTransformer(ch, ctx)),
                TimestepEmbedSequential(ResBlock(2 * ch, ch), SpatialTransformer(ch, ctx), Upsample(ch)),
                TimestepEmbedSequential(ResBlock(2 * ch, ch), SpatialTransformer(ch, ctx)),
                TimestepEmbedSequential(ResBlock(2 * ch, ch), SpatialTransformer(ch, ctx)),
            ])
            self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(ch, 4, 3, padding=1))

        def forward(self, sample, timestep, encoder_hidden_states):
            # The pipelines' float [1] timestep, broadcast to the batch.
            t = timestep.expand(sample.shape[0])
            emb = self.time_embed(timestep_embedding(t, LDM_CH))
            hs, h = [], sample
            for module in self.input_blocks:
                h = module(h, emb, encoder_hidden_states)
                hs.append(h)
            h = self.middle_block(h, emb, encoder_hidden_states)
            for module in self.output_blocks:
                h = module(torch.cat([h, hs.pop()], dim=1), emb, encoder_hidden_states)
            return self.out(h)

    torch.manual_seed(fx.SEED)
    model = UNetModel()
    fx.randomize_norms(model, torch)
    return model.eval()


# --------------------------------------------------------------------------- exports
def export_dynamo(torch, onnx, wrapper, opset):
    """``torch.onnx.export(..., dynamo=True)`` at ``opset``, static shapes; node metadata other
    than ``namespace`` removed."""
    inputs = fx.make_inputs("sd15")
    args = tuple(torch.from_numpy(v) for v in inputs.values())
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper, args, None, input_names=list(inputs), output_names=fx.OUTPUT_NAMES["sd15"],
            opset_version=opset, dynamo=True,
        )
    model = program.model_proto
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key in KEEP_NODE_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    return model


def export_ldm(torch, onnx, model, opset):
    inputs = fx.make_inputs("sd15")
    names = list(inputs)
    args = tuple(torch.from_numpy(inputs[n]) for n in names)
    import tempfile

    with tempfile.TemporaryDirectory() as td, torch.no_grad():
        path = os.path.join(td, "m.onnx")
        torch.onnx.export(model, args, path, input_names=names, output_names=["out_sample"],
                          opset_version=opset, do_constant_folding=True, dynamo=False)
        exported = onnx.load(path)
        ref = model(*args).numpy()
    return exported, ref


def ort_optimize(onnx, model, off=ORT_GPU_ONLY_FUSIONS):
    """ONNX Runtime's transformer optimizer for UNets with its default CPU settings, less the
    fusions named in ``off`` (by default every one whose kernel only its GPU providers have)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("unet")
    for flag in off:
        setattr(options, flag, False)
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    return optimize_model(copy, model_type="unet", optimization_options=options, use_gpu=False).model


def _attr(node, name):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def prune(graph):
    """Removes the nodes whose outputs nothing reads (no graph output either), then unread
    initializers."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    read = {i for n in graph.node for i in n.input}
    for init in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(init)


def rewrite_multi_head_attention(onnx, model, heads):
    """Replaces each attention of the diffusers export, as torch's SDPA decomposition leaves it,

        Q = Transpose[0,2,1,3](Reshape(q)) * s,  K = Transpose[0,2,3,1](Reshape(k)) * s
        Softmax(MatMul(Q, K)) -> MatMul(., Transpose[0,2,1,3](Reshape(v)))
          -> Transpose[0,2,1,3] -> Reshape to [B, S, D]

    (``s`` the square root of SDPA's default scale 1/sqrt(head size)), by one
    ``com.microsoft`` ``MultiHeadAttention(q, k, v) {num_heads}`` on the projections ``q``,
    ``k``, ``v`` ([B, S, D], [B, L, D], [B, L, D]), whose default scale is the same; shape
    computations nothing reads any more are pruned. Returns (model, number of rewrites)."""
    from onnx import helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    readers = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def is_op(n, op, perm):
        return n is not None and n.op_type == op and (perm is None or list(_attr(n, "perm")) == perm)

    def made_by(v, op, perm=None):
        n = producer.get(v)
        return n if is_op(n, op, perm) else None

    def sole_reader(v, op, perm=None):
        rs = readers.get(v, [])
        return rs[0] if len(rs) == 1 and is_op(rs[0], op, perm) else None

    def heads_of(v, perm):
        """The projection under `Mul(Transpose[perm](Reshape(projection)), s)`, and those nodes."""
        mul = made_by(v, "Mul")
        for i in mul.input if mul else []:
            t = made_by(i, "Transpose", perm)
            r = made_by(t.input[0], "Reshape") if t else None
            if r is not None:
                return r.input[0], [mul, t, r]
        return None, []

    count = 0
    for sm in [n for n in g.node if n.op_type == "Softmax"]:
        scores = made_by(sm.input[0], "MatMul")
        pv = sole_reader(sm.output[0], "MatMul")
        if scores is None or pv is None or pv.input[0] != sm.output[0]:
            continue
        q, q_nodes = heads_of(scores.input[0], [0, 2, 1, 3])
        k, k_nodes = heads_of(scores.input[1], [0, 2, 3, 1])
        vt = made_by(pv.input[1], "Transpose", [0, 2, 1, 3])
        vr = made_by(vt.input[0], "Reshape") if vt else None
        ot = sole_reader(pv.output[0], "Transpose", [0, 2, 1, 3])
        back = sole_reader(ot.output[0], "Reshape") if ot else None
        if q is None or k is None or vr is None or back is None:
            continue
        name = sm.name.rsplit("/", 1)[0] + "/MultiHeadAttention"
        mha = helper.make_node("MultiHeadAttention", [q, k, vr.input[0]], [back.output[0]], name=name,
                               domain="com.microsoft", num_heads=heads)
        g.node.insert(list(g.node).index(back), mha)
        for n in [scores, sm, pv, ot, back, vt, vr, *q_nodes, *k_nodes]:
            g.node.remove(n)
        count += 1
    prune(g)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model, count


def onnxsim_simplify(onnx, model):
    import onnxsim

    simplified, ok = onnxsim.simplify(onnx.ModelProto.FromString(model.SerializeToString()))
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified model")
    return simplified


def polygraphy_fold(onnx, model):
    """What ``polygraphy surgeon sanitize --fold-constants`` does."""
    from polygraphy.backend.onnx import fold_constants
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR
    return fold_constants(onnx.ModelProto.FromString(model.SerializeToString()))


# --------------------------------------------------------------------------- descriptions
def attention_form(model) -> str:
    ops = Counter(n.op_type for n in model.graph.node)
    if ops.get("Attention"):
        return f"Attention x{ops['Attention']}"
    if ops.get("MultiHeadAttention"):
        return f"com.microsoft MultiHeadAttention x{ops['MultiHeadAttention']}"
    eqs = Counter(a.s.decode() for n in model.graph.node if n.op_type == "Einsum"
                  for a in n.attribute if a.name == "equation")
    if eqs:
        return "Einsum " + " / ".join(f"'{e}' x{k}" for e, k in sorted(eqs.items()))
    return f"MatMul/Softmax x{ops.get('Softmax', 0)}"


def group_norm_form(model) -> str:
    ops = Counter(n.op_type for n in model.graph.node)
    if ops.get("GroupNormalization"):
        return f"GroupNormalization x{ops['GroupNormalization']}"
    if ops.get("GroupNorm") or ops.get("SkipGroupNorm"):
        return f"com.microsoft GroupNorm x{ops.get('GroupNorm', 0)}, SkipGroupNorm x{ops.get('SkipGroupNorm', 0)}"
    return f"InstanceNormalization pattern x{ops.get('InstanceNormalization', 0)}"


def has_fp16_initializers(onnx, model) -> bool:
    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)


def microsoft_ops(model) -> dict:
    return dict(sorted(Counter(n.op_type for n in model.graph.node if n.domain == "com.microsoft").items()))


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="models/corpus", help="output directory (default: models/corpus)")
    args = ap.parse_args(argv)

    import warnings

    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    import onnx
    import onnxruntime as ort
    import torch

    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    fp32_inputs = fx.make_inputs("sd15")

    def finish(name, model, ref, tol, reference_model=None):
        """Saves, checks, runs in ORT, writes the io.npz; compares with `ref` (max abs ≤ tol).
        With `reference_model`, the outputs are that model's instead (for a model ORT's CPU
        provider cannot run)."""
        path = os.path.join(args.out, name + ".onnx")
        onnx.save_model(model, path)
        checked = fx.check(path, onnx)
        fp16_io = model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
        feeds = {k: v.astype(np.float16) for k, v in fp32_inputs.items()} if fp16_io else dict(fp32_inputs)
        runs = path if reference_model is None else reference_model.SerializeToString()
        outs = fx.run_ort(runs, feeds, ort)
        save_npz(os.path.join(args.out, name + ".io.npz"), {**feeds, **outs})
        err = float(np.max(np.abs(outs["out_sample"].astype(np.float32) - ref)))
        if err > tol:
            raise RuntimeError(f"{name}: ORT output differs from its source by {err} > {tol}")
        dtype = "fp16" if has_fp16_initializers(onnx, model) else "fp32"
        io = "fp16" if fp16_io else "fp32"
        fx.log(f"{name}: {checked} ok, opset {fx.default_opset(model)} (IR {model.ir_version}), "
               f"{len(model.graph.node)} nodes, {os.path.getsize(path):,} bytes, {dtype} (I/O {io}), "
               f"attention {attention_form(model)}, group norm {group_norm_form(model)}, "
               f"max|ort - source| {err:.2g}")
        ms = microsoft_ops(model)
        if ms:
            fx.log(f"  com.microsoft ops: {ms}")
        return outs["out_sample"].astype(np.float32)

    sd15, _ = fx.build_models(torch)["sd15"]

    static17, torch_ref = fx.torch_export(torch, onnx, sd15, "sd15", 17, dynamic=False)
    static17_out = fx.run_ort(static17.SerializeToString(), fp32_inputs, ort)["out_sample"]

    m, _ = fx.torch_export(torch, onnx, sd15, "sd15", 14, dynamic=False)
    finish("torch_legacy_op14_b2", m, torch_ref, 1e-4)

    m, _ = fx.torch_export(torch, onnx, sd15, "sd15", 17, dynamic=True, fold=False)
    finish("torch_legacy_op17_dyn_nofold", m, torch_ref, 1e-4)

    finish("torch_dynamo_b2", export_dynamo(torch, onnx, sd15, 23), torch_ref, 1e-4)

    ldm = build_ldm(torch)
    m, ref = export_ldm(torch, onnx, ldm, 17)
    finish("torch_ldm_einsum_b2", m, ref, 1e-4)

    finish("torch_simplified_b2", polygraphy_fold(onnx, static17), static17_out, 1e-5)

    m16, extra = fx.to_fp16(static17, onnx, ort, keep_io_types=True)
    fx.log(f"  fp16 ops kept fp32 beyond the default block list: {extra}")
    finish("torch_fp16_fp32io_b2", m16, static17_out, 2e-2)

    finish("torch_ort_fp16", fx.to_fp16(ort_optimize(onnx, static17), onnx, ort)[0], static17_out, 2e-2)
    finish("torch_onnxsim_b2", onnxsim_simplify(onnx, static17), static17_out, 1e-5)

    # ORT's GroupNorm and MultiHeadAttention: its GroupNorm fusion needs the dynamic export
    # (the Reshape back reads Shape(x)); its attention fusion does not match the diffusers
    # export, so the attentions become MultiHeadAttention here, checked on ORT's CPU provider.
    dyn17, _ = fx.torch_export(torch, onnx, sd15, "sd15", 17, dynamic=True)
    dyn17_out = fx.run_ort(dyn17.SerializeToString(), fp32_inputs, ort)["out_sample"]
    mha, n = rewrite_multi_head_attention(onnx, dyn17, fx.SD15_CONFIG["attention_head_dim"])
    mha_out = fx.run_ort(mha.SerializeToString(), fp32_inputs, ort)["out_sample"]
    err = float(np.max(np.abs(mha_out - dyn17_out)))
    fx.log(f"  {n} attentions as MultiHeadAttention: max|ort - unfused| {err:.2g}")
    if n != 14 or err > 1e-5:
        raise RuntimeError(f"MultiHeadAttention rewrite: {n} rewrites, max error {err}")
    fused = ort_optimize(onnx, mha, off=ORT_REFUSED_FUSIONS)
    finish("torch_ort_fused_gn_mha", fused, torch_ref, 1e-4, reference_model=dyn17)
    return 0


if __name__ == "__main__":
    sys.exit(main())
