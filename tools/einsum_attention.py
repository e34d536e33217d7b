#!/usr/bin/env python3
"""Rewrites the attention of models/shapes/unet.onnx with Einsum, as the original
latent-diffusion code writes it (`einsum('b i d, b j d -> b i j', q, k)`), keeping every weight.

For each Softmax, the score product MatMul(Q·s, Kᵀ·s) feeding it becomes
Einsum("bhqd,bhkd->bhqk"): the Transpose that puts K's feature axis before its token axis
keeps only the head permutation, and the equation contracts the feature axes itself. The
product MatMul(P, V) reading the Softmax becomes Einsum("bhqk,bhkd->bhqd"). A 3-D attention
((b h) n d) gets the 3-D equations. The check runs both models in ONNX Runtime on the inputs of
io.npz and on a 64x64 batch, and fails when the outputs differ by more than 1e-5 relative.

    .venv/bin/python tools/einsum_attention.py            # writes models/shapes_einsum/
"""

import argparse
import os
from collections import defaultdict

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

TOLERANCE = 1e-5


def single_consumer(consumers, name, node):
    users = consumers[name]
    if len(users) != 1 or users[0] is not node:
        raise SystemExit(f"{name} has consumers other than {node.name}; not rewriting")


def rewrite(model: onnx.ModelProto) -> int:
    """Replaces both products of every attention by Einsum; returns the number of Softmaxes."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    changed = set()  # tensors whose shape changes (their value_info is dropped)
    renamed = {}  # old output name -> new output name
    softmaxes = [n for n in g.node if n.op_type == "Softmax"]
    for sm in softmaxes:
        # Q·Kᵀ: the MatMul behind the Softmax, through scale/mask elementwise ops.
        qk = producer[sm.input[0]]
        while qk.op_type in ("Mul", "Div", "Add", "Where"):
            qk = producer[qk.input[0]]
        if qk.op_type != "MatMul":
            raise SystemExit(f"{sm.name}: scores come from {qk.op_type}, not MatMul")
        # K's path back to its Transpose, through scalar Mul/Div.
        k_path, t = [], producer.get(qk.input[1])
        while t is not None and t.op_type in ("Mul", "Div"):
            k_path.append(t)
            t = producer.get(t.input[0])
        if t is None or t.op_type != "Transpose":
            raise SystemExit(f"{qk.name}: K is not a Transpose (found {t and t.op_type})")
        perm = list(helper.get_attribute_value(t.attribute[0]))
        rank = len(perm)
        for user, value in zip([qk, *k_path], [qk.input[1], *(n.input[0] for n in k_path[:-1])]):
            single_consumer(consumers, value, user)
        single_consumer(consumers, t.output[0], k_path[-1] if k_path else qk)
        # Swap back the last two axes: K arrives [b, h, k, d] instead of [b, h, d, k].
        perm[-1], perm[-2] = perm[-2], perm[-1]
        del t.attribute[:]
        t.attribute.append(helper.make_attribute("perm", perm))
        changed.update([t.output[0], *(n.output[0] for n in k_path)])
        scores, mix = ("bhqd,bhkd->bhqk", "bhqk,bhkd->bhqd") if rank == 4 else ("bid,bjd->bij", "bij,bjd->bid")
        pv = [n for n in consumers[sm.output[0]] if n.op_type == "MatMul" and n.input[0] == sm.output[0]]
        if len(pv) != 1:
            raise SystemExit(f"{sm.name}: {len(pv)} MatMuls read the Softmax as P, expected 1")
        for node, eq in ((qk, scores), (pv[0], mix)):
            node.op_type = "Einsum"
            node.name = node.name.replace("MatMul", "Einsum")
            new = node.output[0].replace("MatMul", "Einsum")
            renamed[node.output[0]] = new
            node.output[0] = new
            node.attribute.append(helper.make_attribute("equation", eq))
    for n in g.node:
        for i, name in enumerate(n.input):
            if name in renamed:
                n.input[i] = renamed[name]
    keep = [v for v in g.value_info if v.name not in changed and v.name not in renamed]
    del g.value_info[:]
    g.value_info.extend(keep)
    return len(softmaxes)


def attention_matmuls(model: onnx.ModelProto) -> list:
    """MatMuls that feed a Softmax (through elementwise ops) or read one."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found = []
    for n in model.graph.node:
        if n.op_type != "Softmax":
            continue
        p = producer[n.input[0]]
        while p.op_type in ("Mul", "Div", "Add", "Where"):
            p = producer[p.input[0]]
        if p.op_type == "MatMul":
            found.append(p.name)
        found += [m.name for m in model.graph.node if m.op_type == "MatMul" and n.output[0] in m.input]
    return found


def run(path: str, feeds: dict) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return sess.run(["out_sample"], feeds)[0]


def compare(original: str, rewritten: str, feeds: dict, label: str) -> tuple:
    a, b = run(original, feeds), run(rewritten, feeds)
    abs_err = float(np.abs(a - b).max())
    rel_err = abs_err / float(np.abs(a).max())
    print(f"{label}: max abs diff {abs_err:.3e}, max rel diff {rel_err:.3e} (max |out| {np.abs(a).max():.3f})")
    if not rel_err <= TOLERANCE:
        raise SystemExit(f"{label}: relative difference {rel_err:.3e} > {TOLERANCE}")
    return abs_err, rel_err, b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default="models/shapes")
    ap.add_argument("--output", default="models/shapes_einsum")
    args = ap.parse_args()
    src, dst = os.path.join(args.input, "unet.onnx"), os.path.join(args.output, "unet.onnx")

    model = onnx.load(src)
    matmuls_before = sum(n.op_type == "MatMul" for n in model.graph.node)
    n_attn = rewrite(model)
    left = attention_matmuls(model)
    assert not left, f"attention MatMuls left: {left}"
    onnx.checker.check_model(model, full_check=True)
    os.makedirs(args.output, exist_ok=True)
    onnx.save(model, dst)
    einsums = sum(n.op_type == "Einsum" for n in model.graph.node)
    matmuls_after = sum(n.op_type == "MatMul" for n in model.graph.node)
    print(f"{dst}: {n_attn} attentions, {einsums} Einsum; MatMul {matmuls_before} -> {matmuls_after}")

    io = dict(np.load(os.path.join(args.input, "io.npz")))
    feeds = {k: io[k] for k in ("sample", "timestep", "encoder_hidden_states")}
    ref_abs, ref_rel, out = compare(src, dst, feeds, "io.npz (batch 2, 32x32)")
    rng = np.random.default_rng(0)
    big = {
        "sample": rng.standard_normal((2, 4, 64, 64), dtype=np.float32),
        "timestep": np.array([250.0], dtype=np.float32),
        "encoder_hidden_states": np.load(os.path.join(args.input, "cond8.npz"))["encoder_hidden_states"][[0, 8]],
    }
    big_abs, big_rel, _ = compare(src, dst, big, "random (batch 2, 64x64)")
    np.savez(os.path.join(args.output, "io.npz"), **feeds, out_sample=out)

    readme = f"""# `shapes_einsum`: models/shapes with Einsum attention

The trained UNet of `models/shapes` (same weights, same I/O) with each attention's two matrix
products written as `Einsum`, the way the original latent-diffusion code writes attention. Made
by `tools/einsum_attention.py`:

```sh
.venv/bin/python tools/einsum_attention.py
```

Per attention ({n_attn} in all, 7 self- and 7 cross-attentions): the score product
`MatMul(Q·s, Transpose(K, [0,2,3,1])·s)` → `Einsum("bhqd,bhkd->bhqk")`, K's Transpose becoming
`[0,2,1,3]` (the feature/token swap is in the equation); the product `MatMul(Softmax, V)` →
`Einsum("bhqk,bhkd->bhqd")`. MatMul {matmuls_before} → {matmuls_after}, {einsums} Einsum nodes;
`onnx.checker` full_check passes.

Check (ONNX Runtime, CPU, graph optimizations off), original vs this model, `out_sample`:

| inputs | max abs diff | max rel diff |
|---|---|---|
| `io.npz` (batch 2, 32×32, t = 500) | {ref_abs:.2e} | {ref_rel:.2e} |
| random sample, batch 2, 64×64, t = 250 | {big_abs:.2e} | {big_rel:.2e} |

`io.npz`: the inputs of `models/shapes/io.npz` and this model's `out_sample`. The sampling
conditioning is `models/shapes/cond8.npz`.
"""
    with open(os.path.join(args.output, "README.md"), "w") as f:
        f.write(readme)


if __name__ == "__main__":
    main()
