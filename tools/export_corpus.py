#!/usr/bin/env python3
"""Write the corpus of UNet graphs "as people really export them" into ``models/corpus/``.

The fixtures of ``tools/export_fixtures.py`` are diffusers models exported by torch. This
corpus covers the other forms a UNet reaches dfc in, built node by node with the ``onnx``
helper API (no torch needed: the project ``.venv`` has ``onnx``, ``onnxruntime`` and
``numpy``), in the layout torch's exporter gives them (module-path node names, shapes folded
into constants because the batch is static):

* ``ldm_einsum_b2.onnx``       LDM-style UNet (CompVis ``openaimodel``: ResBlocks with a
                               time embedding, SpatialTransformer with self- and
                               cross-attention written with ``einsum`` on ``(b h) n d``
                               tensors, GEGLU-free erf GELU feed-forward), opset 17, torch's
                               GroupNorm pattern, **static batch 2** (every Reshape shape
                               carries the batch; the time embedding is expanded to it)
* ``sd_heads_einsum_b2.onnx``  the same UNet with 4-D heads einsums (``bhqd,bhkd->bhqk``,
                               ``bhqk,bhkd->bhqd``), ``GroupNormalization``-21 with per-channel
                               scale and bias, opset 21, static batch 2
* ``attention_op_b2.onnx``     the same UNet with the ONNX ``Attention`` operator (opset 23:
                               3-D self-attention with ``q_num_heads``/``kv_num_heads``, 4-D
                               cross-attention), ``RMSNormalization`` before the feed-forward,
                               static batch 2
* ``refused/fused_ort.onnx``   a graph in the form ONNX Runtime's transformer optimizer leaves
                               (``com.microsoft`` ``NhwcConv``, ``GroupNorm``,
                               ``SkipGroupNorm``, ``MultiHeadAttention``, ``BiasSplitGelu``,
                               ``BiasAdd``): no reference data, dfc must refuse it, listing
                               the ``NhwcConv``, ``BiasAdd`` and ``BiasSplitGelu`` it has no
                               row for

Each runnable model gets ``<name>.io.npz`` (inputs under their ONNX names, then the reference
outputs computed by onnxruntime, CPU, one intra-op thread; uncompressed, fixed timestamps).
Random weights (``numpy.random.default_rng``, one seed per model), inputs from
``default_rng(0)``. Each model is checked with ``onnx.checker.check_model(full_check=True)``
and stays well under 2 MB.

    .venv/bin/python tools/export_corpus.py --out models/corpus
"""

from __future__ import annotations

import argparse
import math
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from npz_io import save_npz

BATCH = 2
CH = 32
HEADS = 4
LATENT_HW = 16
SEQ = 8
CTX = 32
TEMB = 64
GROUPS = 8
TIMESTEP = 500.0


class Builder:
    """Accumulates nodes and initializers; every helper returns its output name."""

    def __init__(self, seed: int, attention: str, gn: str, ff_norm: str):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.names: set = set()
        self.attention = attention  # "einsum3" | "einsum4" | "op"
        self.gn = gn  # "pattern" | "gn21"
        self.ff_norm = ff_norm  # "layer" | "rms"

    def _fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            name = f"{base}_{k}"
            k += 1
        self.names.add(name)
        return name

    def const(self, name: str, value) -> str:
        arr = np.asarray(value)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        name = self._fresh(name)
        self.inits.append(nh.from_array(arr, name))
        return name

    def weight(self, name: str, shape, scale: float | None = None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        s = scale if scale is not None else 1.0 / math.sqrt(max(fan_in, 1))
        return self.const(name, self.rng.standard_normal(shape).astype(np.float32) * s)

    def op(self, op: str, inputs, name: str, domain: str = "", **attrs) -> str:
        out = self._fresh(name + "_output_0")
        self.nodes.append(
            h.make_node(op, list(inputs), [out], name=self._fresh(name), domain=domain, **attrs)
        )
        return out

    # ---- layers ----

    def conv(self, x, cin, cout, k, name, stride=1):
        w = self.weight(f"{name}.weight", (cout, cin, k, k))
        b = self.weight(f"{name}.bias", (cout,), 0.05)
        p = k // 2
        return self.op("Conv", [x, w, b], name, kernel_shape=[k, k], pads=[p] * 4,
                       strides=[stride, stride])

    def linear(self, x, cin, cout, name, bias=True):
        w = self.weight(f"{name}.weight_t", (cin, cout))
        y = self.op("MatMul", [x, w], f"{name}/MatMul")
        if bias:
            y = self.op("Add", [self.weight(f"{name}.bias", (cout,), 0.05), y], f"{name}/Add")
        return y

    def silu(self, x, name):
        return self.op("Mul", [x, self.op("Sigmoid", [x], f"{name}/Sigmoid")], f"{name}/Mul")

    def gelu(self, x, name):
        # torch's erf GELU: x · 0.5 · (1 + erf(x / √2)).
        d = self.op("Div", [x, self.const(f"{name}.sqrt2", np.float32(math.sqrt(2)))], f"{name}/Div")
        e = self.op("Erf", [d], f"{name}/Erf")
        a = self.op("Add", [e, self.const(f"{name}.one", np.float32(1))], f"{name}/Add")
        m = self.op("Mul", [x, a], f"{name}/Mul")
        return self.op("Mul", [m, self.const(f"{name}.half", np.float32(0.5))], f"{name}/Mul_1")

    def group_norm(self, x, c, hw, name):
        gamma = (1 + 0.1 * self.rng.standard_normal(c)).astype(np.float32)
        beta = (0.1 * self.rng.standard_normal(c)).astype(np.float32)
        if self.gn == "gn21":
            return self.op("GroupNormalization",
                           [x, self.const(f"{name}.weight", gamma), self.const(f"{name}.bias", beta)],
                           name, num_groups=GROUPS, epsilon=1e-5, stash_type=1)
        # torch's pattern, with the shapes a static export folds in (the batch included).
        r = self.op("Reshape", [x, self.const(f"{name}.spec", np.array([BATCH, GROUPS, -1], np.int64))],
                    f"{name}/Reshape")
        i = self.op("InstanceNormalization",
                    [r, self.const(f"{name}.ones", np.ones(GROUPS, np.float32)),
                     self.const(f"{name}.zeros", np.zeros(GROUPS, np.float32))],
                    f"{name}/InstanceNormalization", epsilon=1e-5)
        back = self.op("Reshape", [i, self.const(f"{name}.back", np.array([BATCH, c, hw, hw], np.int64))],
                       f"{name}/Reshape_1")
        m = self.op("Mul", [back, self.const(f"{name}.gamma", gamma.reshape(c, 1, 1))], f"{name}/Mul")
        return self.op("Add", [m, self.const(f"{name}.beta", beta.reshape(c, 1, 1))], f"{name}/Add")

    def token_norm(self, x, c, name, kind):
        scale = self.const(f"{name}.weight", (1 + 0.1 * self.rng.standard_normal(c)).astype(np.float32))
        if kind == "rms":
            return self.op("RMSNormalization", [x, scale], name, axis=-1, epsilon=1e-5)
        bias = self.const(f"{name}.bias", (0.1 * self.rng.standard_normal(c)).astype(np.float32))
        return self.op("LayerNormalization", [x, scale, bias], name, axis=-1, epsilon=1e-5)

    def resblock(self, x, cin, cout, hw, emb, name):
        y = self.silu(self.group_norm(x, cin, hw, f"{name}/in_layers.0"), f"{name}/in_layers.1")
        y = self.conv(y, cin, cout, 3, f"{name}/in_layers.2")
        e = self.linear(self.silu(emb, f"{name}/emb_layers.0"), TEMB, cout, f"{name}/emb_layers.1")
        e = self.op("Unsqueeze", [e, self.const(f"{name}.axes", np.array([2, 3], np.int64))],
                    f"{name}/Unsqueeze")
        y = self.op("Add", [y, e], f"{name}/Add")
        y = self.silu(self.group_norm(y, cout, hw, f"{name}/out_layers.0"), f"{name}/out_layers.1")
        y = self.conv(y, cout, cout, 3, f"{name}/out_layers.3")
        skip = x if cin == cout else self.conv(x, cin, cout, 1, f"{name}/skip_connection")
        return self.op("Add", [skip, y], f"{name}/Add_1")

    def heads(self, t, n, name):
        """[B, n, C] → [B, heads, n, d]."""
        d = CH // HEADS
        r = self.op("Reshape", [t, self.const(f"{name}.split", np.array([BATCH, n, HEADS, d], np.int64))],
                    f"{name}/Reshape")
        return self.op("Transpose", [r], f"{name}/Transpose", perm=[0, 2, 1, 3])

    def merge_heads(self, t, n, name):
        """[B, heads, n, d] → [B, n, C]."""
        tr = self.op("Transpose", [t], f"{name}/Transpose", perm=[0, 2, 1, 3])
        return self.op("Reshape", [tr, self.const(f"{name}.merge", np.array([BATCH, n, CH], np.int64))],
                       f"{name}/Reshape")

    def attention_block(self, x, ctx, n, kv_len, name):
        """to_q/to_k/to_v, attention in this builder's form, to_out."""
        d = CH // HEADS
        ctx_dim = CH if ctx is None else CTX
        src = x if ctx is None else ctx
        q = self.linear(x, CH, CH, f"{name}/to_q", bias=False)
        k = self.linear(src, ctx_dim, CH, f"{name}/to_k", bias=False)
        v = self.linear(src, ctx_dim, CH, f"{name}/to_v", bias=False)
        if self.attention == "op":
            if ctx is None:
                o = self.op("Attention", [q, k, v], f"{name}/Attention", q_num_heads=HEADS,
                            kv_num_heads=HEADS)
            else:
                o4 = self.op("Attention", [self.heads(q, n, f"{name}/q"), self.heads(k, kv_len, f"{name}/k"),
                                           self.heads(v, kv_len, f"{name}/v")], f"{name}/Attention")
                o = self.merge_heads(o4, n, f"{name}/o")
        elif self.attention == "einsum4":
            qh, kh, vh = (self.heads(t, m, f"{name}/{w}") for t, m, w in
                          ((q, n, "q"), (k, kv_len, "k"), (v, kv_len, "v")))
            s = self.op("Einsum", [qh, kh], f"{name}/Einsum", equation="bhqd,bhkd->bhqk")
            s = self.op("Mul", [s, self.const(f"{name}.scale", np.float32(d ** -0.5))], f"{name}/Mul")
            p = self.op("Softmax", [s], f"{name}/Softmax", axis=-1)
            o4 = self.op("Einsum", [p, vh], f"{name}/Einsum_1", equation="bhqk,bhkd->bhqd")
            o = self.merge_heads(o4, n, f"{name}/o")
        else:
            # ldm: rearrange(t, 'b n (h d) -> (b h) n d'), einsum on the merged batch·heads axis.
            def bh(t, m, w):
                r = self.heads(t, m, f"{name}/{w}")
                return self.op("Reshape", [r, self.const(f"{name}.{w}bh", np.array([BATCH * HEADS, m, d], np.int64))],
                               f"{name}/{w}/Reshape_1")
            qh, kh, vh = bh(q, n, "q"), bh(k, kv_len, "k"), bh(v, kv_len, "v")
            s = self.op("Einsum", [qh, kh], f"{name}/Einsum", equation="b i d, b j d -> b i j")
            s = self.op("Mul", [s, self.const(f"{name}.scale", np.float32(d ** -0.5))], f"{name}/Mul")
            p = self.op("Softmax", [s], f"{name}/Softmax", axis=-1)
            o = self.op("Einsum", [p, vh], f"{name}/Einsum_1", equation="b i j, b j d -> b i d")
            o = self.op("Reshape", [o, self.const(f"{name}.unbh", np.array([BATCH, HEADS, n, d], np.int64))],
                        f"{name}/o/Reshape_0")
            o = self.merge_heads(o, n, f"{name}/o")
        return self.linear(o, CH, CH, f"{name}/to_out.0")

    def transformer(self, x, ctx, hw, name):
        n = hw * hw
        y = self.group_norm(x, CH, hw, f"{name}/norm")
        y = self.conv(y, CH, CH, 1, f"{name}/proj_in")
        y = self.op("Reshape", [y, self.const(f"{name}.flat", np.array([BATCH, CH, n], np.int64))],
                    f"{name}/Reshape")
        t = self.op("Transpose", [y], f"{name}/Transpose", perm=[0, 2, 1])
        blk = f"{name}/transformer_blocks.0"
        a = self.attention_block(self.token_norm(t, CH, f"{blk}/norm1", "layer"), None, n, n, f"{blk}/attn1")
        t = self.op("Add", [a, t], f"{blk}/Add")
        a = self.attention_block(self.token_norm(t, CH, f"{blk}/norm2", "layer"), ctx, n, SEQ, f"{blk}/attn2")
        t = self.op("Add", [a, t], f"{blk}/Add_1")
        f = self.token_norm(t, CH, f"{blk}/norm3", self.ff_norm)
        f = self.linear(self.gelu(self.linear(f, CH, 2 * CH, f"{blk}/ff/net.0"), f"{blk}/ff/gelu"),
                        2 * CH, CH, f"{blk}/ff/net.2")
        t = self.op("Add", [f, t], f"{blk}/Add_2")
        y = self.op("Transpose", [t], f"{name}/Transpose_1", perm=[0, 2, 1])
        y = self.op("Reshape", [y, self.const(f"{name}.unflat", np.array([BATCH, CH, hw, hw], np.int64))],
                    f"{name}/Reshape_1")
        y = self.conv(y, CH, CH, 1, f"{name}/proj_out")
        return self.op("Add", [y, x], f"{name}/Add")

    def time_embedding(self, t):
        half = TEMB // 4
        freqs = np.exp(-math.log(10000) * np.arange(half, dtype=np.float32) / half).astype(np.float32)
        u = self.op("Unsqueeze", [t, self.const("time.axes", np.array([1], np.int64))], "/time_embed/Unsqueeze")
        a = self.op("Mul", [u, self.const("time.freqs", freqs.reshape(1, half))], "/time_embed/Mul")
        e = self.op("Concat", [self.op("Cos", [a], "/time_embed/Cos"), self.op("Sin", [a], "/time_embed/Sin")],
                    "/time_embed/Concat", axis=1)
        e = self.linear(e, 2 * half, TEMB, "/time_embed/0")
        e = self.linear(self.silu(e, "/time_embed/1"), TEMB, TEMB, "/time_embed/2")
        # timesteps.expand(B): a static export folds the batch into the shape.
        return self.op("Expand", [e, self.const("time.batch", np.array([BATCH, TEMB], np.int64))],
                       "/time_embed/Expand")

    def unet(self, sample, timestep, ctx):
        hw = LATENT_HW
        emb = self.time_embedding(timestep)
        x = self.conv(sample, 4, CH, 3, "/input_blocks.0/input_blocks.0.0")
        h0 = self.resblock(x, CH, CH, hw, emb, "/input_blocks.1/input_blocks.1.0")
        h0 = self.transformer(h0, ctx, hw, "/input_blocks.1/input_blocks.1.1")
        h1 = self.conv(h0, CH, CH, 3, "/input_blocks.2/input_blocks.2.0/op", stride=2)
        m = self.resblock(h1, CH, CH, hw // 2, emb, "/middle_block/middle_block.0")
        m = self.transformer(m, ctx, hw // 2, "/middle_block/middle_block.1")
        u = self.op("Resize", [m, "", self.const("/output_blocks.0.scales", np.array([1, 1, 2, 2], np.float32))],
                    "/output_blocks.0/Upsample/Resize", mode="nearest")
        u = self.conv(u, CH, CH, 3, "/output_blocks.0/Upsample/conv")
        c = self.op("Concat", [u, h0], "/output_blocks.1/Concat", axis=1)
        y = self.resblock(c, 2 * CH, CH, hw, emb, "/output_blocks.1/output_blocks.1.0")
        y = self.silu(self.group_norm(y, CH, hw, "/out/out.0"), "/out/out.1")
        return self.conv(y, CH, 4, 3, "/out/out.2")


def build_unet(name: str, seed: int, attention: str, gn: str, ff_norm: str, opset: int, ir: int):
    b = Builder(seed, attention, gn, ff_norm)
    out = b.unet("sample", "timestep", "encoder_hidden_states")
    b.nodes.append(h.make_node("Identity", [out], ["out_sample"], name="/out/Identity"))
    graph = h.make_graph(
        b.nodes, name,
        [h.make_tensor_value_info("sample", T.FLOAT, [BATCH, 4, LATENT_HW, LATENT_HW]),
         h.make_tensor_value_info("timestep", T.FLOAT, [1]),
         h.make_tensor_value_info("encoder_hidden_states", T.FLOAT, [BATCH, SEQ, CTX])],
        [h.make_tensor_value_info("out_sample", T.FLOAT, [BATCH, 4, LATENT_HW, LATENT_HW])],
        b.inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], producer_name="dfc export_corpus")
    model.ir_version = ir
    return model


def build_fused() -> onnx.ModelProto:
    """What onnxruntime.transformers.optimizer leaves of a UNet block (NHWC, fused ops)."""
    b = Builder(9, "op", "gn21", "layer")
    ms = "com.microsoft"
    hw, n = LATENT_HW, LATENT_HW * LATENT_HW
    x = b.op("Transpose", ["sample"], "/conv_in/Transpose", perm=[0, 2, 3, 1])
    x = b.op("NhwcConv", [x, b.weight("conv_in.weight", (CH, 4, 3, 3)), b.weight("conv_in.bias", (CH,), 0.05)],
             "/conv_in/NhwcConv", domain=ms, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    gamma, beta = b.const("gn.gamma", np.ones(CH, np.float32)), b.const("gn.beta", np.zeros(CH, np.float32))
    g = b.op("GroupNorm", [x, gamma, beta], "/down_blocks.0/resnets.0/norm1/GroupNorm", domain=ms,
             groups=GROUPS, epsilon=1e-5, activation=1, channels_last=1)
    skip = b.op("SkipGroupNorm", [g, gamma, beta, x], "/down_blocks.0/resnets.0/norm2/SkipGroupNorm",
                domain=ms, groups=GROUPS, epsilon=1e-5, activation=1, channels_last=1)
    t = b.op("Reshape", [skip, b.const("tokens", np.array([BATCH, n, CH], np.int64))], "/attn/Reshape")
    q = b.linear(t, CH, CH, "/attn/to_q", bias=False)
    a = b.op("MultiHeadAttention", [q, "encoder_hidden_states", "encoder_hidden_states"],
             "/attn/MultiHeadAttention", domain=ms, num_heads=HEADS)
    a = b.op("BiasAdd", [a, b.weight("attn.bias", (CH,), 0.05), t], "/attn/BiasAdd", domain=ms)
    f = b.op("BiasSplitGelu", [b.linear(a, CH, 2 * CH, "/ff/proj", bias=False), b.weight("ff.bias", (2 * CH,), 0.05)],
             "/ff/BiasSplitGelu", domain=ms)
    y = b.op("Reshape", [f, b.const("back", np.array([BATCH, hw, hw, CH], np.int64))], "/out/Reshape")
    b.nodes.append(h.make_node("Transpose", [y], ["out_sample"], name="/out/Transpose", perm=[0, 3, 1, 2]))
    graph = h.make_graph(
        b.nodes, "fused_ort",
        [h.make_tensor_value_info("sample", T.FLOAT, [BATCH, 4, hw, hw]),
         h.make_tensor_value_info("encoder_hidden_states", T.FLOAT, [BATCH, SEQ, CH])],
        [h.make_tensor_value_info("out_sample", T.FLOAT, [BATCH, CH, hw, hw])],
        b.inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17), h.make_opsetid(ms, 1)],
                         producer_name="dfc export_corpus")
    model.ir_version = 8
    return model


def inputs() -> dict:
    rng = np.random.default_rng(0)
    return {
        "sample": rng.standard_normal((BATCH, 4, LATENT_HW, LATENT_HW)).astype(np.float32),
        "timestep": np.array([TIMESTEP], np.float32),
        "encoder_hidden_states": rng.standard_normal((BATCH, SEQ, CTX)).astype(np.float32),
    }


MODELS = [
    # name, seed, attention form, group norm form, feed-forward norm, opset, IR version
    ("ldm_einsum_b2", 1, "einsum3", "pattern", "layer", 17, 8),
    ("sd_heads_einsum_b2", 2, "einsum4", "gn21", "layer", 21, 10),
    ("attention_op_b2", 3, "op", "gn21", "rms", 23, 10),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="models/corpus")
    args = ap.parse_args()
    os.makedirs(os.path.join(args.out, "refused"), exist_ok=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    for name, seed, att, gn, ffn, opset, ir in MODELS:
        model = build_unet(name, seed, att, gn, ffn, opset, ir)
        onnx.checker.check_model(model, full_check=True)
        path = os.path.join(args.out, f"{name}.onnx")
        onnx.save(model, path)
        feeds = inputs()
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        save_npz(os.path.join(args.out, f"{name}.io.npz"), {**feeds, **outs})
        ops = sorted({n.op_type for n in model.graph.node})
        print(f"{name}: {len(model.graph.node)} nodes, {os.path.getsize(path):,} bytes, "
              f"out std {float(np.std(outs['out_sample'])):.3f}; ops {', '.join(ops)}")
    fused = build_fused()
    onnx.checker.check_model(fused)
    path = os.path.join(args.out, "refused", "fused_ort.onnx")
    onnx.save(fused, path)
    print(f"refused/fused_ort: {len(fused.graph.node)} nodes, {os.path.getsize(path):,} bytes")


if __name__ == "__main__":
    main()
