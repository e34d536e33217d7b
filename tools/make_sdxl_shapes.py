#!/usr/bin/env python3
"""SDXL base UNet's layer structure as an ONNX graph, for cost and memory estimates.

Writes ``OUT/unet.onnx`` with every layer of SDXL base 1.0's UNet (2.57 B parameters: conv_in,
3 down blocks, the mid block with 10 transformer blocks, 3 up blocks, 70 self-attentions and 70
cross-attentions, time and added-condition embeddings) at a static batch and latent size, in
fp16. Weights are external data in ``OUT/weights.bin``, a sparse file of the right size that is
never written (all zeros): the graph, its shapes and its weights' sizes are SDXL's, the values
are not. Attention is the ONNX ``Attention`` operator (opset 23, 3-D with ``q_num_heads``), the
form a fused (flash) attention kernel runs; GroupNorm is ``GroupNormalization``-21.

Only the ``onnx`` and ``numpy`` packages are needed (no torch). Usage::

    .venv/bin/python tools/make_sdxl_shapes.py --latent 128 --out target/sdxl_shapes_1024
    dfc compile target/sdxl_shapes_1024/unet.onnx --gpus 8 -o target/sdxl_1024_n8
"""

import argparse
import math
import os

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

CH = (320, 640, 1280)  # block_out_channels
DEPTH = (0, 2, 10)  # transformer blocks per attention layer, per level
TEMB = 1280
CTX = 2048  # cross-attention dim
SEQ = 77
HEAD_DIM = 64
GROUPS = 32
WEIGHTS = "weights.bin"


class Builder:
    def __init__(self, batch: int):
        self.batch = batch
        self.nodes = []
        self.inits = []
        self.offset = 0
        self.names = set()
        self.params = 0

    def _fresh(self, name: str) -> str:
        base, k = name, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def weight(self, name: str, shape) -> str:
        """An fp16 weight stored in the (sparse) external file."""
        name = self._fresh(name)
        n = int(np.prod(shape))
        t = T()
        t.name = name
        t.data_type = T.FLOAT16
        t.dims.extend(shape)
        t.data_location = T.EXTERNAL
        for k, v in (("location", WEIGHTS), ("offset", str(self.offset)), ("length", str(2 * n))):
            e = t.external_data.add()
            e.key, e.value = k, v
        self.offset += (2 * n + 63) // 64 * 64
        self.params += n
        self.inits.append(t)
        return name

    def const(self, name: str, arr) -> str:
        name = self._fresh(name)
        self.inits.append(nh.from_array(np.asarray(arr), name))
        return name

    def op(self, op: str, inputs, name: str, **attrs) -> str:
        out = self._fresh(name + "_output_0")
        self.nodes.append(h.make_node(op, list(inputs), [out], name=self._fresh(name), **attrs))
        return out

    # ---- layers ----

    def conv(self, x, cin, cout, k, name, stride=1):
        w = self.weight(f"{name}.weight", (cout, cin, k, k))
        b = self.weight(f"{name}.bias", (cout,))
        p = k // 2
        return self.op("Conv", [x, w, b], name, kernel_shape=[k, k], pads=[p] * 4, strides=[stride] * 2)

    def linear(self, x, cin, cout, name, bias=True):
        y = self.op("MatMul", [x, self.weight(f"{name}.weight_t", (cin, cout))], f"{name}/MatMul")
        if bias:
            y = self.op("Add", [self.weight(f"{name}.bias", (cout,)), y], f"{name}/Add")
        return y

    def silu(self, x, name):
        return self.op("Mul", [x, self.op("Sigmoid", [x], f"{name}/Sigmoid")], f"{name}/Mul")

    def group_norm(self, x, c, name, eps=1e-5):
        return self.op("GroupNormalization",
                       [x, self.weight(f"{name}.weight", (c,)), self.weight(f"{name}.bias", (c,))],
                       name, num_groups=GROUPS, epsilon=eps, stash_type=1)

    def layer_norm(self, x, c, name):
        return self.op("LayerNormalization",
                       [x, self.weight(f"{name}.weight", (c,)), self.weight(f"{name}.bias", (c,))],
                       name, axis=-1, epsilon=1e-5)

    def resnet(self, x, cin, cout, emb, name):
        y = self.silu(self.group_norm(x, cin, f"{name}/norm1"), f"{name}/act1")
        y = self.conv(y, cin, cout, 3, f"{name}/conv1")
        e = self.linear(self.silu(emb, f"{name}/time_act"), TEMB, cout, f"{name}/time_emb_proj")
        e = self.op("Unsqueeze", [e, self.const(f"{name}.axes", np.array([2, 3], np.int64))], f"{name}/Unsqueeze")
        y = self.op("Add", [y, e], f"{name}/Add")
        y = self.silu(self.group_norm(y, cout, f"{name}/norm2"), f"{name}/act2")
        y = self.conv(y, cout, cout, 3, f"{name}/conv2")
        skip = x if cin == cout else self.conv(x, cin, cout, 1, f"{name}/conv_shortcut")
        return self.op("Add", [skip, y], f"{name}/Add_1")

    def attention(self, x, ctx, c, name):
        src, src_dim = (x, c) if ctx is None else (ctx, CTX)
        q = self.linear(x, c, c, f"{name}/to_q", bias=False)
        k = self.linear(src, src_dim, c, f"{name}/to_k", bias=False)
        v = self.linear(src, src_dim, c, f"{name}/to_v", bias=False)
        heads = c // HEAD_DIM
        o = self.op("Attention", [q, k, v], f"{name}/Attention", q_num_heads=heads, kv_num_heads=heads)
        return self.linear(o, c, c, f"{name}/to_out.0")

    def transformer(self, x, ctx, c, hw, depth, name):
        hh, ww = hw
        n = hh * ww
        b = self.batch
        y = self.group_norm(x, c, f"{name}/norm", eps=1e-6)
        y = self.op("Reshape", [y, self.const(f"{name}.flat", np.array([b, c, n], np.int64))], f"{name}/Reshape")
        t = self.op("Transpose", [y], f"{name}/Transpose", perm=[0, 2, 1])
        t = self.linear(t, c, c, f"{name}/proj_in")
        for i in range(depth):
            blk = f"{name}/transformer_blocks.{i}"
            a = self.attention(self.layer_norm(t, c, f"{blk}/norm1"), None, c, f"{blk}/attn1")
            t = self.op("Add", [a, t], f"{blk}/Add")
            a = self.attention(self.layer_norm(t, c, f"{blk}/norm2"), ctx, c, f"{blk}/attn2")
            t = self.op("Add", [a, t], f"{blk}/Add_1")
            f = self.layer_norm(t, c, f"{blk}/norm3")
            # GEGLU: one projection to 8c, halves split, value × GELU(gate).
            p = self.linear(f, c, 8 * c, f"{blk}/ff/net.0/proj")
            val = self.op("Slice", [p, self.const(f"{blk}.s0", np.array([0], np.int64)),
                                    self.const(f"{blk}.e0", np.array([4 * c], np.int64)),
                                    self.const(f"{blk}.ax", np.array([2], np.int64))], f"{blk}/ff/Slice")
            gate = self.op("Slice", [p, self.const(f"{blk}.s1", np.array([4 * c], np.int64)),
                                     self.const(f"{blk}.e1", np.array([8 * c], np.int64)),
                                     self.const(f"{blk}.ax1", np.array([2], np.int64))], f"{blk}/ff/Slice_1")
            g = self.op("Gelu", [gate], f"{blk}/ff/Gelu")
            f = self.linear(self.op("Mul", [val, g], f"{blk}/ff/Mul"), 4 * c, c, f"{blk}/ff/net.2")
            t = self.op("Add", [f, t], f"{blk}/Add_2")
        t = self.linear(t, c, c, f"{name}/proj_out")
        y = self.op("Transpose", [t], f"{name}/Transpose_1", perm=[0, 2, 1])
        y = self.op("Reshape", [y, self.const(f"{name}.unflat", np.array([b, c, hh, ww], np.int64))],
                    f"{name}/Reshape_1")
        return self.op("Add", [y, x], f"{name}/Add")

    def sinusoid(self, x, dim, name):
        """diffusers' Timesteps(dim, flip_sin_to_cos=True, shift=0) of a [B] or [B·k] tensor."""
        half = dim // 2
        freqs = np.exp(-math.log(10000) * np.arange(half) / half).astype(np.float16)
        u = self.op("Unsqueeze", [x, self.const(f"{name}.axes", np.array([1], np.int64))], f"{name}/Unsqueeze")
        a = self.op("Mul", [u, self.const(f"{name}.freqs", freqs.reshape(1, half))], f"{name}/Mul")
        return self.op("Concat", [self.op("Cos", [a], f"{name}/Cos"), self.op("Sin", [a], f"{name}/Sin")],
                       f"{name}/Concat", axis=1)

    def embedding(self, timestep, text_embeds, time_ids):
        b = self.batch
        t = self.op("Expand", [timestep, self.const("time.batch", np.array([b], np.int64))], "/time_proj/Expand")
        e = self.sinusoid(t, CH[0], "/time_proj")
        e = self.linear(e, CH[0], TEMB, "/time_embedding/linear_1")
        e = self.linear(self.silu(e, "/time_embedding/act"), TEMB, TEMB, "/time_embedding/linear_2")
        ids = self.op("Reshape", [time_ids, self.const("add.flat", np.array([-1], np.int64))], "/add_time_proj/Reshape")
        a = self.sinusoid(ids, 256, "/add_time_proj")
        a = self.op("Reshape", [a, self.const("add.back", np.array([b, 6 * 256], np.int64))], "/add_time_proj/Reshape_1")
        a = self.op("Concat", [text_embeds, a], "/add_embedding/Concat", axis=1)
        a = self.linear(a, 1280 + 6 * 256, TEMB, "/add_embedding/linear_1")
        a = self.linear(self.silu(a, "/add_embedding/act"), TEMB, TEMB, "/add_embedding/linear_2")
        return self.op("Add", [e, a], "/Add_emb")

    def unet(self, latent):
        emb = self.embedding("timestep", "text_embeds", "time_ids")
        ctx = "encoder_hidden_states"
        x = self.conv("sample", 4, CH[0], 3, "/conv_in")
        hw = (latent, latent)
        skips, c = [x], CH[0]
        for level, cout in enumerate(CH):
            for i in range(2):
                x = self.resnet(x, c, cout, emb, f"/down_blocks.{level}/resnets.{i}")
                c = cout
                if DEPTH[level]:
                    x = self.transformer(x, ctx, c, hw, DEPTH[level], f"/down_blocks.{level}/attentions.{i}")
                skips.append(x)
            if level < len(CH) - 1:
                x = self.conv(x, c, c, 3, f"/down_blocks.{level}/downsamplers.0/conv", stride=2)
                hw = (hw[0] // 2, hw[1] // 2)
                skips.append(x)
        x = self.resnet(x, c, c, emb, "/mid_block/resnets.0")
        x = self.transformer(x, ctx, c, hw, DEPTH[-1], "/mid_block/attentions.0")
        x = self.resnet(x, c, c, emb, "/mid_block/resnets.1")
        for u, level in enumerate(reversed(range(len(CH)))):
            cout = CH[level]
            for i in range(3):
                s = skips.pop()
                x = self.op("Concat", [x, s], f"/up_blocks.{u}/Concat_{i}", axis=1)
                x = self.resnet(x, c + self.channels[s], cout, emb, f"/up_blocks.{u}/resnets.{i}")
                c = cout
                if DEPTH[level]:
                    x = self.transformer(x, ctx, c, hw, DEPTH[level], f"/up_blocks.{u}/attentions.{i}")
            if level > 0:
                x = self.op("Resize", [x, "", self.const(f"/up_blocks.{u}.scales",
                                                         np.array([1, 1, 2, 2], np.float32))],
                            f"/up_blocks.{u}/upsamplers.0/Resize", mode="nearest")
                hw = (hw[0] * 2, hw[1] * 2)
                x = self.conv(x, c, c, 3, f"/up_blocks.{u}/upsamplers.0/conv")
        y = self.silu(self.group_norm(x, c, "/conv_norm_out"), "/conv_act")
        return self.conv(y, c, 4, 3, "/conv_out")


def skip_channels():
    """Channels of every skip connection, in push order (conv_in first)."""
    out = [CH[0]]
    c = CH[0]
    for level, cout in enumerate(CH):
        out += [cout, cout]
        c = cout
        if level < len(CH) - 1:
            out.append(c)
    return out


def build(batch: int, latent: int):
    b = Builder(batch)
    # The skips' channels, looked up by value name when the up blocks concatenate them.
    chans = skip_channels()
    b.channels = _SkipChannels(chans)
    out = b.unet(latent)
    b.nodes.append(h.make_node("Identity", [out], ["out_sample"], name="/out/Identity"))
    f16 = T.FLOAT16
    graph = h.make_graph(
        b.nodes, "sdxl_shapes",
        [h.make_tensor_value_info("sample", f16, [batch, 4, latent, latent]),
         h.make_tensor_value_info("timestep", f16, [1]),
         h.make_tensor_value_info("encoder_hidden_states", f16, [batch, SEQ, CTX]),
         h.make_tensor_value_info("text_embeds", f16, [batch, 1280]),
         h.make_tensor_value_info("time_ids", f16, [batch, 6])],
        [h.make_tensor_value_info("out_sample", f16, [batch, 4, latent, latent])],
        b.inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 23)], producer_name="dfc make_sdxl_shapes")
    model.ir_version = 10
    return model, b


class _SkipChannels:
    """Channels of the skip tensors, consumed in pop order (last pushed first)."""

    def __init__(self, pushed):
        self.left = list(pushed)

    def __getitem__(self, _name):
        return self.left.pop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latent", type=int, default=128, help="latent height and width (image / 8)")
    ap.add_argument("--batch", type=int, default=2, help="batch (2: the CFG pair)")
    ap.add_argument("--out", required=True, help="output folder")
    args = ap.parse_args()
    model, b = build(args.batch, args.latent)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, WEIGHTS), "wb") as f:
        f.truncate(b.offset)
    onnx.save(model, os.path.join(args.out, "unet.onnx"))
    print(f"{len(model.graph.node)} nodes, {b.params / 1e9:.3f} B parameters "
          f"({b.offset / 2**30:.2f} GiB sparse {WEIGHTS}), latent {args.latent}², batch {args.batch}")


if __name__ == "__main__":
    main()
