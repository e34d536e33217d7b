"""Load on the dfc Triton backend against one `dfc run` process per image.

Run with the Python of tools/setup_triton.sh's venv after `cargo build --release`:

    ~/.cache/dfc/triton-venv/bin/python tools/bench_serving.py [--steps 10] [--requests 16]

For each plan (the trained models/shapes UNet, one image with guidance: batch 2, 64×64,
compiled for 2 and 4 ranks) and each instance count (1, 2, 4), a server is started and loaded
by 1, 4 and 16 concurrent clients (HTTP, each sending its share of --requests requests with
distinct seeds, one after another). Reported: requests per second and p50/p99 latency. The
baseline makes the same number of images with one `dfc run` process each, 1 and 4 processes
at a time. Prints a Markdown table.
"""

import argparse
import concurrent.futures
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.http as http

ROOT = Path(__file__).resolve().parent.parent
DFC = ROOT / "target/release/dfc"
LIB = ROOT / "target/release/libtriton_dfc.so"


def server_binary():
    import pytriton

    return Path(pytriton.__file__).parent / "tritonserver/bin/tritonserver"


def free_port():
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base < 65000:
            return base


def ort_library():
    libs = sorted((ROOT / ".venv/lib").glob("python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*"))
    if not libs:
        sys.exit("bench_serving: no ONNX Runtime in .venv (run tools/setup.sh)")
    return str(libs[0])


def dfc(*args):
    subprocess.run([str(DFC), *map(str, args)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def percentile(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def make_inputs(cond, seed, steps):
    out = []
    for name, array, dtype in [
        ("encoder_hidden_states", cond, "FP32"),
        ("seed", np.array([seed], np.int64), "INT64"),
        ("steps", np.array([steps], np.int32), "INT32"),
        ("guidance", np.array([3.0], np.float32), "FP32"),
    ]:
        i = http.InferInput(name, list(array.shape), dtype)
        i.set_data_from_numpy(array)
        out.append(i)
    return out


def load(port, cond, clients, requests, steps):
    per = max(1, requests // clients)

    def client(k):
        c = http.InferenceServerClient(f"localhost:{port}", network_timeout=600, connection_timeout=600)
        lat = []
        for j in range(per):
            t = time.perf_counter()
            c.infer("m", make_inputs(cond, 1000 * k + j, steps))
            lat.append(time.perf_counter() - t)
        return lat

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        lats = [x for l in pool.map(client, range(clients)) for x in l]
    wall = time.perf_counter() - start
    return len(lats) / wall, percentile(lats, 0.5), percentile(lats, 0.99), len(lats)


def serve(repo, work):
    port = free_port()
    log = open(work / f"server_{port}.log", "w")
    env = dict(os.environ, ORT_DYLIB_PATH=ort_library())
    p = subprocess.Popen(
        [str(server_binary()), "--model-repository", str(repo), "--backend-directory", str(work / "backends"),
         "--http-port", str(port), "--grpc-port", str(port + 1), "--metrics-port", str(port + 2)],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://localhost:{port}/v2/models/m/ready").status == 200:
                return p, port
        except Exception:
            time.sleep(0.2)
    p.kill()
    sys.exit(f"bench_serving: the server did not get ready (log {log.name})")


def baseline(plan, cond_file, work, images, parallel, steps):
    threads = max(1, os.cpu_count() // parallel)

    def one(k):
        t = time.perf_counter()
        dfc("run", plan, "--inputs", cond_file, "--steps", steps, "--guidance", 3, "--seed", k,
            "--threads", threads, "-o", work / f"base_{parallel}_{k}.npz")
        return time.perf_counter() - t

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        lats = list(pool.map(one, range(images)))
    wall = time.perf_counter() - start
    return images / wall, percentile(lats, 0.5), percentile(lats, 0.99), images


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--ranks", default="2,4")
    ap.add_argument("--instances", default="1,2,4")
    ap.add_argument("--clients", default="1,4,16")
    args = ap.parse_args()
    for f in (DFC, LIB):
        if not f.is_file():
            sys.exit(f"bench_serving: {f} is missing (cargo build --release)")
    work = Path(tempfile.mkdtemp(prefix="dfc-bench-serving-"))
    (work / "backends/dfc").mkdir(parents=True)
    os.symlink(LIB, work / "backends/dfc/libtriton_dfc.so")
    cond = np.load(ROOT / "models/shapes/cond8.npz")["encoder_hidden_states"][[0, 8]].astype(np.float32)
    cond_file = work / "cond.npz"
    np.savez(cond_file, encoder_hidden_states=cond)
    rows = []
    for ranks in map(int, args.ranks.split(",")):
        plan = work / f"plan{ranks}"
        dfc("compile", ROOT / "models/shapes/unet.onnx", "--gpus", ranks, "--batch", 2, "--height", 64,
            "--width", 64, "--dim", "sequence=4", "-o", plan)
        for parallel in (1, 4):
            rps, p50, p99, n = baseline(plan, cond_file, work, args.requests, parallel, args.steps)
            rows.append((ranks, f"`dfc run` × {parallel} at a time", "–", n, rps, p50, p99))
            print(rows[-1], file=sys.stderr)
        for instances in map(int, args.instances.split(",")):
            repo = work / f"repo{ranks}_{instances}"
            dfc("triton", plan, "-o", repo, "--name", "m", "--instances", instances)
            server, port = serve(repo, work)
            try:
                load(port, cond, 1, 1, args.steps)  # warm up every code path once
                for clients in map(int, args.clients.split(",")):
                    rps, p50, p99, n = load(port, cond, clients, args.requests, args.steps)
                    rows.append((ranks, f"server, {instances} instance(s)", clients, n, rps, p50, p99))
                    print(rows[-1], file=sys.stderr)
            finally:
                server.terminate()
                server.wait(timeout=120)
    print(f"| ranks | how | clients | images | images/s | p50 latency | p99 latency |")
    print("|---|---|---|---|---|---|---|")
    for ranks, how, clients, n, rps, p50, p99 in rows:
        print(f"| {ranks} | {how} | {clients} | {n} | {rps:.2f} | {p50:.2f} s | {p99:.2f} s |")


if __name__ == "__main__":
    main()
