"""Checks a running Triton server that serves a dfc plan (driven by tests/triton.rs).

Usage: client.py --http PORT --grpc PORT --model NAME --cond COND.npz --refs DIR --steps S
                 --guidance G --max-steps M

DIR holds `dfc run`'s latents for the same plan: seed{K}.npz for seeds 0..7 (DDIM) and
euler0.npz (seed 0, Euler). Exits 1 with a message on the first check that fails.
"""

import argparse
import concurrent.futures
import json
import sys
import time
import urllib.request

import numpy as np
import tritonclient.grpc as grpc
import tritonclient.http as http
from tritonclient.utils import InferenceServerException


def fail(message):
    print(f"client: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def inputs(module, cond, seed, steps, guidance, scheduler=None, drop=(), extra=None, override=None):
    """The request's inputs as `module.InferInput`s; `override` maps a name to (array, type)."""
    arrays = {name: (np.ascontiguousarray(a), {np.float32: "FP32", np.float16: "FP16", np.int64: "INT64"}[a.dtype.type])
              for name, a in cond.items()}
    arrays["seed"] = (np.array([seed], np.int64), "INT64")
    arrays["steps"] = (np.array([steps], np.int32), "INT32")
    arrays["guidance"] = (np.array([guidance], np.float32), "FP32")
    if scheduler is not None:
        arrays["scheduler"] = (np.array([scheduler.encode()], dtype=np.object_), "BYTES")
    for name, value in (override or {}).items():
        arrays[name] = value
    for name, value in (extra or {}).items():
        arrays[name] = value
    out = []
    for name, (array, dtype) in arrays.items():
        if name in drop:
            continue
        i = module.InferInput(name, list(array.shape), dtype)
        i.set_data_from_numpy(array)
        out.append(i)
    return out


def same(name, got, want):
    if got is None:
        fail(f"{name}: no latent in the response")
    if got.shape != want.shape or got.dtype != want.dtype:
        fail(f"{name}: latent {got.dtype}{got.shape}, dfc run gave {want.dtype}{want.shape}")
    diff = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want)))
    if not diff <= 1e-6 * max(scale, 1.0):
        fail(f"{name}: max |served - dfc run| = {diff:.3g} (scale {scale:.3g})")
    return diff


def main():
    p = argparse.ArgumentParser()
    for a in ["--http", "--grpc", "--model", "--cond", "--refs"]:
        p.add_argument(a, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--guidance", type=float, required=True)
    p.add_argument("--max-steps", type=int, required=True)
    p.add_argument("--vae-model", help="a model served with a VAE (32×32 plan, seed 4)")
    p.add_argument("--vae-ref", help="dfc run's latent for it")
    p.add_argument("--vae-image-out", help="where to write the served image's bytes")
    args = p.parse_args()
    cond = dict(np.load(args.cond))
    refs = {k: np.load(f"{args.refs}/seed{k}.npz")["latent"] for k in range(8)}
    euler = np.load(f"{args.refs}/euler0.npz")["latent"]
    hc = http.InferenceServerClient(f"localhost:{args.http}")
    gc = grpc.InferenceServerClient(f"localhost:{args.grpc}")
    m, steps, g = args.model, args.steps, args.guidance

    # 1. One request over each protocol equals `dfc run`.
    r = hc.infer(m, inputs(http, cond, 0, steps, g))
    d = same("HTTP seed 0", r.as_numpy("latent"), refs[0])
    r = gc.infer(m, inputs(grpc, cond, 0, steps, g))
    d = max(d, same("gRPC seed 0", r.as_numpy("latent"), refs[0]))
    r = hc.infer(m, inputs(http, cond, 0, steps, g, scheduler="euler"))
    same("HTTP seed 0 euler", r.as_numpy("latent"), euler)
    print(f"client: HTTP and gRPC equal dfc run (max difference {d:.3g}), scheduler input honoured")

    # 2. Eight concurrent clients, each with its own seed and connection.
    def one(seed):
        if seed % 2:
            c = grpc.InferenceServerClient(f"localhost:{args.grpc}")
            out = c.infer(m, inputs(grpc, cond, seed, steps, g)).as_numpy("latent")
        else:
            c = http.InferenceServerClient(f"localhost:{args.http}")
            out = c.infer(m, inputs(http, cond, seed, steps, g)).as_numpy("latent")
        return seed, out

    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for seed, out in pool.map(one, range(8)):
            same(f"concurrent seed {seed}", out, refs[seed])
    print(f"client: 8 concurrent clients got their own dfc run results ({time.time() - start:.1f} s)")

    # 3. Bad requests: an error naming the input, then the server still serves.
    name, array = next(iter(cond.items()))
    dtype = {np.float32: "FP32", np.float16: "FP16", np.int64: "INT64"}[array.dtype.type]
    wrong_type = (array.astype(np.float64), "FP64")
    wrong_shape = (np.zeros((1,) + array.shape, array.dtype), dtype)
    bad = [
        ("missing input", dict(drop=(name,)), name),
        ("missing seed", dict(drop=("seed",)), "seed"),
        ("unexpected input", dict(extra={"bogus": (np.zeros([1], np.float32), "FP32")}), "bogus"),
        ("wrong dtype", dict(override={name: wrong_type}), name),
        ("wrong shape", dict(override={name: wrong_shape}), name),
        ("steps 0", dict(override={"steps": (np.array([0], np.int32), "INT32")}), "steps"),
        ("steps above max", dict(override={"steps": (np.array([args.max_steps + 1], np.int32), "INT32")}), "max_steps"),
        ("NaN guidance", dict(override={"guidance": (np.array([np.nan], np.float32), "FP32")}), "guidance"),
        ("infinite guidance", dict(override={"guidance": (np.array([np.inf], np.float32), "FP32")}), "guidance"),
        ("negative seed", dict(override={"seed": (np.array([-3], np.int64), "INT64")}), "seed"),
        ("steps as INT64", dict(override={"steps": (np.array([3], np.int64), "INT64")}), "steps"),
        ("unknown scheduler", dict(scheduler="heun"), "scheduler"),
    ]
    for label, kw, needle in bad:
        for module, client in [(http, hc), (grpc, gc)]:
            kw2 = dict(kw)
            sched = kw2.pop("scheduler", None)
            try:
                client.infer(m, inputs(module, cond, 0, steps, g, scheduler=sched, **kw2))
            except InferenceServerException as e:
                text = str(e)
                if needle not in text:
                    fail(f"{label} ({module.__name__}): the error does not name `{needle}`: {text}")
                continue
            fail(f"{label} ({module.__name__}): the server accepted it")
    r = gc.infer(m, inputs(grpc, cond, 3, steps, g))
    same("after the bad requests", r.as_numpy("latent"), refs[3])
    print(f"client: {len(bad)} kinds of bad request refused over HTTP and gRPC with the input named; served afterwards")

    # 4. Triton's statistics and metrics count the work.
    stats = json.load(urllib.request.urlopen(f"http://localhost:{args.http}/v2/models/{m}/stats"))
    s = stats["model_stats"][0]
    ok, failed = s["inference_stats"]["success"], s["inference_stats"]["fail"]
    # Triton itself refuses wrong names, types and shapes; the rest reach the backend and
    # count as failures (6 kinds, over both protocols).
    if ok["count"] < 12 or failed["count"] < 12:
        fail(f"statistics: {ok['count']} successes, {failed['count']} failures")
    if not (s["inference_stats"]["compute_infer"]["ns"] > 0 and s["execution_count"] >= 12):
        fail(f"statistics: {s}")
    # Queue time is Triton's enqueue to the backend's execution start: both on one clock.
    queue = s["inference_stats"]["queue"]
    if not 0 <= queue["ns"] <= queue["count"] * 60e9:
        fail(f"statistics: queue time {queue} (the backend's timestamps are on another clock)")
    metrics = urllib.request.urlopen(f"http://localhost:{int(args.http) + 2}/metrics").read().decode()
    if f'nv_inference_count{{model="{m}"' not in metrics:
        fail("metrics: no nv_inference_count for the model")
    print(f"client: statistics {ok['count']} successes / {failed['count']} failures, "
          f"compute {s['inference_stats']['compute_infer']['ns'] / 1e9:.2f} s; metrics exported")

    # 5. Cancellation: a long request cancelled by its client stops early.
    results = []
    ctx = gc.async_infer(m, inputs(grpc, cond, 5, args.max_steps, g),
                         callback=lambda result, error: results.append((result, error)))
    time.sleep(1.5)
    ctx.cancel()
    deadline = time.time() + 60
    while not results and time.time() < deadline:
        time.sleep(0.05)
    if not results or results[0][1] is None:
        fail(f"cancellation: the request was not cancelled: {results}")
    print(f"client: cancelled request answered: {results[0][1]}")
    # The instance is free again and serves the next request.
    r = hc.infer(m, inputs(http, cond, 7, steps, g))
    same("after cancellation", r.as_numpy("latent"), refs[7])
    # 6. A model with a VAE answers the latent and the image.
    if args.vae_model:
        r = hc.infer(args.vae_model, inputs(http, cond, 4, steps, g))
        same("VAE model latent", r.as_numpy("latent"), np.load(args.vae_ref)["latent"])
        image = r.as_numpy("image")
        if image is None or image.dtype != np.uint8 or image.ndim != 4 or image.shape[-1] != 3:
            fail(f"VAE model image: {None if image is None else (image.dtype, image.shape)}")
        with open(args.vae_image_out, "wb") as f:
            f.write(image.tobytes())
        print(f"client: VAE model answered latent and image {image.shape}")
    print("client: all checks passed")


if __name__ == "__main__":
    main()
