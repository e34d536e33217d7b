#!/usr/bin/env python3
"""Train a small class-conditional diffusion UNet on procedural "shapes" scenes (CPU).

Purpose: a *trained* (not random) diffusers ``UNet2DConditionModel`` for fidelity
experiments with patch parallelism (DistriFusion-style bands along H), exported to
ONNX with the same conventions as ``tools/export_fixtures.py`` (TorchScript exporter,
``dynamo=False``, opset 17, inputs ``sample`` / ``timestep`` (float32 [1]) /
``encoder_hidden_states`` -> output ``out_sample``).

Data (generated on the fly, numpy, seeded per step -> deterministic and resumable):
  * square RGB images (default 32x32) of 1-3 shapes (circle, square, triangle, ring)
    drawn with anti-aliased signed-distance functions on a plain or linear-gradient
    dark/grey background.  The *main* shape (the largest, drawn last = on top) is one
    of 4 shapes x 4 colours (red, green, blue, yellow) = 16 classes; up to 2 smaller
    distractor shapes of arbitrary shape/colour (white/cyan/magenta/orange as well)
    are drawn underneath.  With probability 0.6 the main shape's centre is placed on
    (or close to) a horizontal band border (rows H/2, H/4, 3H/4, H/8...), so the
    objects very often cross the borders between the bands of patch parallelism.
  * "pixel latent": there is no VAE, the diffusion runs directly on a 4-channel
    image: channels 0..2 = RGB scaled to [-1, 1], channel 3 = luminance
    (0.299 R + 0.587 G + 0.114 B, also in [-1, 1]).  Decoding = take channels 0..2
    (the 4th channel is redundant and ignored for display).

Conditioning: a learned table of 16 class token sets + 1 "null" set, each
[4 tokens, cross_attention_dim] (nn.Embedding outside the UNet).  During training
10% of the class tokens are replaced by the null tokens (classifier-free guidance
dropout).  The exported ONNX takes ``encoder_hidden_states`` as input; the table is
saved in ``tokens.npz`` (``tokens`` [16, 4, D], ``null`` [4, D], ``class_names``).

Diffusion: epsilon prediction, SD's DDPM schedule ("scaled_linear", beta
0.00085 -> 0.012, 1000 steps; ``DDPMScheduler.add_noise``).  AdamW, linear warmup
then a cosine decay over the *wall-clock* budget (``--minutes``), EMA of the
weights (exported).  Checkpoints go to ``--ckpt`` every ``--ckpt-minutes``; a stopped
run continues with ``--resume`` (elapsed training time is kept in the checkpoint).

Outputs (``--out``, default models/shapes):
  unet.onnx      opset 17, dynamic batch/height/width/sequence (H, W multiples of 4)
  tokens.npz     class tokens + null tokens + class names
  samples.png    16 samples (one per class), DDIM 25 steps, guidance 3, torch CPU
  data.png       16 training images for comparison
  io.npz         ORT reference pair, batch 2 (uncond, cond) at 32x32
  train_log.txt  step, elapsed seconds, loss (mean over the logging window), lr

Typical use (from the repository root)::

    nohup nice -n 19 .venv-export/bin/python tools/train_shapes.py --minutes 40 \\
        > /tmp/train_shapes.out 2>&1 &
    # after an interruption:
    nice -n 19 .venv-export/bin/python tools/train_shapes.py --minutes 40 --resume
    # export / sample only, from the checkpoint:
    .venv-export/bin/python tools/train_shapes.py --export-only
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

from npz_io import save_npz

SHAPES = ["circle", "square", "triangle", "ring"]
COLORS = {  # main-shape colours (class colours)
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15),
}
EXTRA_COLORS = [(0.95, 0.95, 0.95), (0.10, 0.85, 0.85), (0.85, 0.20, 0.85), (0.95, 0.55, 0.10)]
COLOR_NAMES = list(COLORS)
CLASS_NAMES = [f"{c} {s}" for s in SHAPES for c in COLOR_NAMES]  # class = shape*4 + colour
NUM_CLASSES = len(CLASS_NAMES)
N_TOKENS = 4
CROSS_DIM = 32

UNET_CONFIG = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64, 64),
    # no attention at full resolution (CPU budget: 1024-token self-attention is ~8x the
    # cost of the whole rest of the net); self+cross attention at 1/2 and 1/4 res + mid
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    cross_attention_dim=CROSS_DIM,
    attention_head_dim=8,  # diffusers naming: number of heads
    norm_num_groups=8,
    use_linear_projection=False,  # SD1.5 style 1x1 conv proj_in/proj_out
)
SCHED_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
)


# --------------------------------------------------------------------------- data
def _sdf(kind, px, py, cx, cy, r, rot):
    """Signed distance (in image-width units) for shape ids `kind` (arrays [B])
    at pixel coords px, py ([S, S], in [0, 1]).  Returns [B, S, S]."""
    dx = px[None] - cx[:, None, None]
    dy = py[None] - cy[:, None, None]
    c, s = np.cos(rot)[:, None, None], np.sin(rot)[:, None, None]
    rx, ry = c * dx + s * dy, -s * dx + c * dy
    r3 = r[:, None, None]
    d_circle = np.sqrt(dx * dx + dy * dy) - r3
    h = r3 * 0.8  # square half side
    qx, qy = np.abs(rx) - h, np.abs(ry) - h
    d_square = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2) + np.minimum(np.maximum(qx, qy), 0)
    # equilateral triangle (iq), pointing up in the rotated frame, circumradius ~ r
    k = math.sqrt(3.0)
    a = r3 * 0.85
    tx = np.abs(rx) - a
    ty = -ry + a / k
    m = tx + k * ty > 0
    tx2 = np.where(m, (tx - k * ty) / 2, tx)
    ty2 = np.where(m, (-k * tx - ty) / 2, ty)
    tx2 = tx2 - np.clip(tx2, -2 * a, 0)
    d_tri = -np.sqrt(tx2 * tx2 + ty2 * ty2) * np.sign(ty2)
    d_ring = np.abs(np.sqrt(dx * dx + dy * dy) - r3 * 0.8) - r3 * 0.22
    k4 = kind[:, None, None]
    return np.select([k4 == 0, k4 == 1, k4 == 2], [d_circle, d_square, d_tri], d_ring)


def make_batch(rng: np.random.Generator, n: int, size: int):
    """n scenes at size x size.  Returns (x [n,4,S,S] float32 in [-1,1], labels [n] int64)."""
    coords = (np.arange(size) + 0.5) / size
    px, py = np.meshgrid(coords, coords)  # py varies along rows (H)
    # background: plain or linear gradient between two dark/grey colours
    c0 = rng.uniform(0.0, 0.45, (n, 3))
    c1 = np.where(rng.random((n, 1)) < 0.5, c0, rng.uniform(0.0, 0.45, (n, 3)))
    ang = rng.uniform(0, 2 * np.pi, n)
    t = (np.cos(ang)[:, None, None] * (px[None] - 0.5) + np.sin(ang)[:, None, None] * (py[None] - 0.5)) * 1.2 + 0.5
    t = np.clip(t, 0, 1)[:, None]
    img = c0[:, :, None, None] * (1 - t) + c1[:, :, None, None] * t  # [n,3,S,S]
    # distractors (0-2, smaller, any colour), drawn first
    n_extra = rng.choice(3, n, p=[0.4, 0.35, 0.25])
    all_cols = np.array(list(COLORS.values()) + EXTRA_COLORS)
    for j in range(2):
        kind = rng.integers(0, 4, n)
        col = all_cols[rng.integers(0, len(all_cols), n)]
        r = rng.uniform(0.07, 0.14, n)
        cx, cy = rng.uniform(0.1, 0.9, n), rng.uniform(0.1, 0.9, n)
        d = _sdf(kind, px, py, cx, cy, r, rng.uniform(0, 2 * np.pi, n))
        cov = np.clip(0.5 - d * size, 0, 1) * (n_extra > j)[:, None, None]
        img = img * (1 - cov[:, None]) + col[:, :, None, None] * cov[:, None]
    # main shape
    shape = rng.integers(0, 4, n)
    color = rng.integers(0, 4, n)
    r = rng.uniform(0.16, 0.30, n)
    cx = rng.uniform(0.2, 0.8, n)
    borders = np.array([0.5, 0.25, 0.75, 0.125, 0.375, 0.625, 0.875])
    on_border = rng.random(n) < 0.6
    cy_b = borders[rng.choice(len(borders), n, p=[0.3, 0.2, 0.2, 0.075, 0.075, 0.075, 0.075])]
    cy_b = cy_b + rng.uniform(-0.5, 0.5, n) * r  # centre within half a radius of the border
    cy = np.clip(np.where(on_border, cy_b, rng.uniform(0.2, 0.8, n)), 0.12, 0.88)
    rot = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(-0.5, 0.5, n))
    d = _sdf(shape, px, py, cx, cy, r, rot)
    cov = np.clip(0.5 - d * size, 0, 1)
    col = np.array(list(COLORS.values()))[color]
    col = np.clip(col + rng.uniform(-0.05, 0.05, (n, 3)), 0, 1)
    img = img * (1 - cov[:, None]) + col[:, :, None, None] * cov[:, None]
    lum = 0.299 * img[:, 0:1] + 0.587 * img[:, 1:2] + 0.114 * img[:, 2:3]
    x = np.concatenate([img, lum], axis=1) * 2 - 1
    return x.astype(np.float32), (shape * 4 + color).astype(np.int64)


# --------------------------------------------------------------------------- utils
def to_uint8(x):
    """[n,4,S,S] in [-1,1] -> [n,S,S,3] uint8 (RGB channels)."""
    rgb = np.clip((x[:, :3] + 1) / 2, 0, 1)
    return (rgb.transpose(0, 2, 3, 1) * 255 + 0.5).astype(np.uint8)


def save_grid(path, imgs, labels, scale=4, cols=4):
    from PIL import Image, ImageDraw

    n, s = imgs.shape[0], imgs.shape[1]
    rows = (n + cols - 1) // cols
    cell_w, cell_h, pad = s * scale, s * scale + 14, 4
    grid = Image.new("RGB", (cols * (cell_w + pad) + pad, rows * (cell_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = pad + c * (cell_w + pad), pad + r * (cell_h + pad)
        im = Image.fromarray(imgs[i]).resize((cell_w, s * scale), Image.NEAREST)
        grid.paste(im, (x0, y0))
        draw.text((x0 + 2, y0 + s * scale + 1), labels[i], fill=(0, 0, 0))
    grid.save(path)


def log(*a):
    print(*a, flush=True)


# --------------------------------------------------------------------------- model
def build(torch):
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    tokens = torch.nn.Embedding(NUM_CLASSES + 1, N_TOKENS * CROSS_DIM)  # index 16 = null
    torch.nn.init.normal_(tokens.weight, std=1.0)
    sched = DDPMScheduler(**SCHED_CONFIG)
    return unet, tokens, sched


def ehs(tokens, idx):
    return tokens(idx).view(idx.shape[0], N_TOKENS, CROSS_DIM)


def train(args, torch):
    import copy

    unet, tokens, sched = build(torch)
    n_params = sum(p.numel() for p in unet.parameters())
    log(f"UNet parameters: {n_params:,}; token table: {tokens.weight.numel():,}")
    params = list(unet.parameters()) + list(tokens.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4, betas=(0.9, 0.99))
    ema_unet, ema_tok = copy.deepcopy(unet).eval(), copy.deepcopy(tokens).eval()
    for p in list(ema_unet.parameters()) + list(ema_tok.parameters()):
        p.requires_grad_(False)
    step, elapsed_prev = 0, 0.0
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "train_log.txt")
    if args.resume and os.path.exists(args.ckpt):
        ck = torch.load(args.ckpt, map_location="cpu", weights_only=False)
        unet.load_state_dict(ck["unet"]); tokens.load_state_dict(ck["tokens"])
        ema_unet.load_state_dict(ck["ema_unet"]); ema_tok.load_state_dict(ck["ema_tokens"])
        opt.load_state_dict(ck["opt"])
        step, elapsed_prev = ck["step"], ck["elapsed"]
        log(f"resumed from {args.ckpt}: step {step}, {elapsed_prev / 60:.1f} min trained")
        logf = open(log_path, "a")
    else:
        logf = open(log_path, "w")
        logf.write(f"# tools/train_shapes.py {' '.join(sys.argv[1:])}\n# step elapsed_s loss lr\n")
    alphas = sched.alphas_cumprod
    budget = args.minutes * 60.0
    t0 = time.time()
    last_ck = t0
    acc, acc_n = 0.0, 0

    def save_ckpt():
        torch.save(
            dict(unet=unet.state_dict(), tokens=tokens.state_dict(), ema_unet=ema_unet.state_dict(),
                 ema_tokens=ema_tok.state_dict(), opt=opt.state_dict(), step=step,
                 elapsed=elapsed_prev + time.time() - t0, args=vars(args)),
            args.ckpt + ".tmp",
        )
        os.replace(args.ckpt + ".tmp", args.ckpt)

    unet.train()
    while True:
        elapsed = elapsed_prev + time.time() - t0
        if elapsed >= budget or (args.max_steps and step >= args.max_steps):
            break
        # lr: linear warmup (steps), then cosine over the wall-clock budget to 5% of lr
        frac = min(elapsed / budget, 1.0)
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        rng = np.random.default_rng([args.seed, step])
        hires = args.hires_every and step % args.hires_every == args.hires_every - 1
        if hires:  # same compute: 2x the side, 1/4 of the batch
            x0, lab = make_batch(rng, max(1, args.batch // 4), 2 * args.resolution)
        else:
            x0, lab = make_batch(rng, args.batch, args.resolution)
        bs = x0.shape[0]
        drop = rng.random(bs) < args.cfg_drop
        lab = np.where(drop, NUM_CLASSES, lab)
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        x0 = torch.from_numpy(x0)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (bs,), generator=gen)
        xt = sched.add_noise(x0, noise, t)
        pred = unet(xt, t, ehs(tokens, torch.from_numpy(lab)), return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(list(ema_unet.parameters()) + list(ema_tok.parameters()), params):
                e.lerp_(p, 1 - decay)
        acc += loss.item(); acc_n += 1
        if step % args.log_every == 0:
            el = elapsed_prev + time.time() - t0
            line = f"{step} {el:.1f} {acc / acc_n:.5f} {lr:.3e}"
            logf.write(line + "\n"); logf.flush()
            log(line)
            acc, acc_n = 0.0, 0
        if time.time() - last_ck > args.ckpt_minutes * 60:
            save_ckpt(); last_ck = time.time()
    save_ckpt()
    logf.close()
    log(f"training done: step {step}, {(elapsed_prev + time.time() - t0) / 60:.1f} min")
    del alphas


# --------------------------------------------------------------------------- sampling / export
@np.errstate(all="ignore")
def sample(torch, unet, tok_cond, tok_null, labels, size, steps, guidance, seed):
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler(**SCHED_CONFIG, set_alpha_to_one=False, steps_offset=1)
    ddim.set_timesteps(steps)
    n = len(labels)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 4, size, size), generator=g)
    cond = torch.from_numpy(tok_cond[labels])
    null = torch.from_numpy(np.broadcast_to(tok_null, cond.shape).copy())
    with torch.no_grad():
        for t in ddim.timesteps:
            inp = torch.cat([x, x])
            e = unet(inp, t, torch.cat([null, cond]), return_dict=False)[0]
            eu, ec = e.chunk(2)
            x = ddim.step(eu + guidance * (ec - eu), t, x).prev_sample
    return x.numpy()


def export(args, torch):
    import inspect

    import onnx
    import onnxruntime as ort

    unet, tokens, _ = build(torch)
    ck = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    unet.load_state_dict(ck["ema_unet"]); tokens.load_state_dict(ck["ema_tokens"])
    unet.eval()
    n_params = sum(p.numel() for p in unet.parameters())
    log(f"loaded EMA weights (step {ck['step']}, {ck['elapsed'] / 60:.1f} min); UNet params {n_params:,}")
    os.makedirs(args.out, exist_ok=True)
    tab = tokens.weight.detach().numpy().reshape(NUM_CLASSES + 1, N_TOKENS, CROSS_DIM).astype(np.float32)
    tok_cond, tok_null = tab[:NUM_CLASSES], tab[NUM_CLASSES]
    save_npz(os.path.join(args.out, "tokens.npz"),
             {"tokens": tok_cond, "null": tok_null, "class_names": np.array(CLASS_NAMES)})

    class Wrapper(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    w = Wrapper(unet).eval()
    rng = np.random.default_rng(0)
    inputs = {
        "sample": rng.standard_normal((2, 4, 32, 32)).astype(np.float32),
        "timestep": np.array([500.0], dtype=np.float32),
        "encoder_hidden_states": np.stack([tok_null, tok_cond[CLASS_NAMES.index("red circle")]]),
    }
    targs = tuple(torch.from_numpy(inputs[k]) for k in inputs)
    kw = dict(input_names=list(inputs), output_names=["out_sample"], opset_version=17,
              do_constant_folding=True,
              dynamic_axes={"sample": {0: "batch", 2: "height", 3: "width"},
                            "encoder_hidden_states": {0: "batch", 1: "sequence"},
                            "out_sample": {0: "batch", 2: "height", 3: "width"}})
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kw["dynamo"] = False
    path = os.path.join(args.out, "unet.onnx")
    with torch.no_grad():
        torch.onnx.export(w, targs, path, **kw)
        ref = w(*targs).numpy()
    onnx.checker.check_model(path, full_check=True)
    so = ort.SessionOptions(); so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    out = sess.run(["out_sample"], inputs)[0]
    err = float(np.abs(out - ref).max())
    log(f"ONNX {path}: {os.path.getsize(path):,} bytes; ORT vs torch max abs err {err:.2e}")
    assert err <= 1e-4, err
    # dynamic-shape smoke test: batch 1, 64x48, 4 tokens
    x2 = rng.standard_normal((1, 4, 64, 48)).astype(np.float32)
    e2 = tok_cond[3:4]
    o2 = sess.run(["out_sample"], {"sample": x2, "timestep": np.array([250.0], np.float32),
                                   "encoder_hidden_states": e2})[0]
    with torch.no_grad():
        r2 = w(torch.from_numpy(x2), torch.tensor([250.0]), torch.from_numpy(e2)).numpy()
    err2 = float(np.abs(o2 - r2).max())
    log(f"dynamic smoke test 1x4x64x48: max abs err {err2:.2e}")
    assert err2 <= 1e-4, err2
    save_npz(os.path.join(args.out, "io.npz"), {**inputs, "out_sample": out})

    labels = np.arange(NUM_CLASSES)
    for size in args.sample_sizes:
        t0 = time.time()
        xs = sample(torch, unet, tok_cond, tok_null, labels, size, args.sample_steps, args.guidance, args.seed)
        name = "samples.png" if size == 32 else f"samples_{size}.png"
        save_grid(os.path.join(args.out, name), to_uint8(xs), [CLASS_NAMES[i] for i in labels],
                  scale=max(1, 128 // size))
        log(f"wrote {name} ({size}x{size}, {time.time() - t0:.1f}s)")
    xd, ld = make_batch(np.random.default_rng([args.seed, 10**9]), 16, 32)
    save_grid(os.path.join(args.out, "data.png"), to_uint8(xd), [CLASS_NAMES[i] for i in ld])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--minutes", type=float, default=40.0, help="wall-clock training budget (total, across resumes)")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = no limit)")
    ap.add_argument("--resolution", type=int, default=32, help="training image size")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hires-every", type=int, default=4,
                    help="every Nth step trains at 2x resolution with batch/4 (0 = never)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100, help="warmup steps")
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--cfg-drop", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="models/shapes")
    ap.add_argument("--ckpt", default="/tmp/shapes_ckpt.pt")
    ap.add_argument("--ckpt-minutes", type=float, default=3.0)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--resume", action="store_true", help="continue from --ckpt")
    ap.add_argument("--export-only", action="store_true", help="skip training; export/sample from --ckpt")
    ap.add_argument("--no-export", action="store_true", help="train only")
    ap.add_argument("--sample-sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--data-grid", metavar="PNG", help="only write a grid of 16 training images and exit")
    ap.add_argument("--bench", type=int, default=0, help="time N training steps and exit")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.data_grid:
        x, l = make_batch(np.random.default_rng([args.seed, 10**9]), 16, args.resolution)
        save_grid(args.data_grid, to_uint8(x), [CLASS_NAMES[i] for i in l], scale=max(1, 128 // args.resolution))
        return
    if args.bench:
        unet, tokens, sched = build(torch)
        log(f"params {sum(p.numel() for p in unet.parameters()):,}")
        opt = torch.optim.AdamW(list(unet.parameters()) + list(tokens.parameters()), lr=1e-3)
        for i in range(args.bench + 1):
            if i == 1:
                t0 = time.time()
            td = time.time()
            x0, lab = make_batch(np.random.default_rng(i), args.batch, args.resolution)
            td = time.time() - td
            x0 = torch.from_numpy(x0); noise = torch.randn_like(x0); t = torch.randint(0, 1000, (args.batch,))
            loss = torch.nn.functional.mse_loss(
                unet(sched.add_noise(x0, noise, t), t, ehs(tokens, torch.from_numpy(lab)), return_dict=False)[0], noise)
            opt.zero_grad(); loss.backward(); opt.step()
        log(f"{(time.time() - t0) / args.bench:.3f} s/step (data {td:.3f}s) at batch {args.batch}, {args.resolution}px")
        return
    if not args.export_only:
        train(args, torch)
    if not args.no_export:
        export(args, torch)


if __name__ == "__main__":
    main()
