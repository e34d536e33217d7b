#!/usr/bin/env python3
"""Record diffusers' sampler trajectories as the reference for dfc's samplers.

Writes ``tests/sampler_reference.json``, read by ``tests/samplers.rs``, which runs
``dfc::runtime::sampler`` on the same inputs and compares.

Versions: diffusers 0.42.1, torch 2.15.0, numpy 2.4.6 (the pins of
``tools/requirements-export.txt``).  Run from the repository root::

    .venv-export/bin/python tools/sampler_reference.py --out tests/sampler_reference.json

Schedulers are built the way a diffusers pipeline builds them when a user swaps
the scheduler: ``Scheduler.from_config(base_config, **overrides)`` where
``base_config`` is a literal copy of the ``scheduler/scheduler_config.json``
shipped with the base model (no model hub is contacted):

* ``SD15``: runwayml/stable-diffusion-v1-5 (a PNDMScheduler config: scaled_linear
  0.00085..0.012, 1000 train steps, steps_offset 1, set_alpha_to_one false,
  clip_sample false, no ``timestep_spacing`` key).  Each scheduler therefore
  keeps its own default spacing: DDIM "leading", Euler "linspace",
  DPM-Solver++ "linspace".
* ``SDXL``: stabilityai/stable-diffusion-xl-base-1.0 (an EulerDiscreteScheduler
  config, same betas, ``timestep_spacing`` "leading", steps_offset 1,
  interpolation_type linear, use_karras_sigmas false).  Every scheduler uses
  "leading" spacing.

Every scheduler keeps its other defaults: DDIM eta 0; Euler s_churn 0,
final_sigmas_type "zero"; DPMSolverMultistepScheduler algorithm_type
"dpmsolver++", solver_order 2, solver_type "midpoint", lower_order_final true,
euler_at_final false, final_sigmas_type "zero", lambda_min_clipped -inf.

Each case runs the loop a pipeline runs, with fixed fake model outputs:

    x = noise * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        model_in = scheduler.scale_model_input(x, t)
        x = scheduler.step(eps[i], t, x).prev_sample

``noise`` (shape ``LATENT``) and ``eps`` (``MAX_STEPS`` x ``LATENT``) are standard
normals from ``torch.Generator().manual_seed(SEED)``, shared by every case (a case
of n steps uses ``eps[:n]``).  The file records, per case, the timesteps, the
sigmas (Euler and DPM-Solver++), init_noise_sigma, the scaled model input of
every step (only where it differs from x, i.e. Euler) and x after every step.
It also records ``alphas_cumprod`` of the scaled_linear schedule (all 1000) and
of the linear schedule (every 10th).  Floats are written with 9 significant
digits, enough to round-trip float32.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

SEED = 20240611
LATENT = (1, 4, 2, 2)
MAX_STEPS = 25

SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

SDXL = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

KINDS = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "dpmpp2m": DPMSolverMultistepScheduler,
}

# (name, base config, kind, steps, overrides)
CASES = [
    ("sd15_ddim_10", SD15, "ddim", 10, {}),
    ("sd15_ddim_25", SD15, "ddim", 25, {}),
    ("sd15_euler_10", SD15, "euler", 10, {}),
    ("sd15_euler_25", SD15, "euler", 25, {}),
    ("sd15_dpmpp2m_10", SD15, "dpmpp2m", 10, {}),
    ("sd15_dpmpp2m_25", SD15, "dpmpp2m", 25, {}),
    ("sdxl_ddim_10", SDXL, "ddim", 10, {}),
    ("sdxl_euler_10", SDXL, "euler", 10, {}),
    ("sdxl_euler_25", SDXL, "euler", 25, {}),
    ("sdxl_dpmpp2m_10", SDXL, "dpmpp2m", 10, {}),
    ("sdxl_dpmpp2m_25", SDXL, "dpmpp2m", 25, {}),
    ("sd15_ddim_10_v", SD15, "ddim", 10, {"prediction_type": "v_prediction"}),
    ("sdxl_euler_10_v", SDXL, "euler", 10, {"prediction_type": "v_prediction"}),
    ("sd15_dpmpp2m_10_v", SD15, "dpmpp2m", 10, {"prediction_type": "v_prediction"}),
    ("sd15_ddim_10_trailing", SD15, "ddim", 10, {"timestep_spacing": "trailing"}),
    ("sd15_euler_10_trailing", SD15, "euler", 10, {"timestep_spacing": "trailing"}),
    ("sd15_dpmpp2m_20_trailing", SD15, "dpmpp2m", 20, {"timestep_spacing": "trailing"}),
    (
        "linear_ddim_10",
        SD15,
        "ddim",
        10,
        {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    ),
]


def floats(t) -> list[float]:
    """Float32 values as JSON numbers with 9 significant digits."""
    a = np.asarray(t, dtype=np.float32).reshape(-1)
    return [float(f"{v:.9g}") for v in a.tolist()]


def config_of(sched) -> dict:
    keys = [
        "beta_schedule",
        "beta_start",
        "beta_end",
        "num_train_timesteps",
        "prediction_type",
        "timestep_spacing",
        "steps_offset",
    ]
    return {k: sched.config[k] for k in keys}


def run_case(name, base, kind, steps, overrides, noise, eps) -> dict:
    sched = KINDS[kind].from_config(base, **overrides)
    sched.set_timesteps(steps)
    init_sigma = float(sched.init_noise_sigma)
    x = noise * sched.init_noise_sigma
    out = {
        "name": name,
        "kind": kind,
        "steps": steps,
        "config": config_of(sched),
        "timesteps": [float(t) for t in sched.timesteps.tolist()],
        "init_noise_sigma": init_sigma,
        "x_init": floats(x),
        "model_in": [],
        "x": [],
    }
    if kind != "ddim":
        out["sigmas"] = floats(sched.sigmas)
    for i, t in enumerate(sched.timesteps):
        model_in = sched.scale_model_input(x, t)
        if kind == "euler":
            out["model_in"].append(floats(model_in))
        x = sched.step(eps[i], t, x).prev_sample
        out["x"].append(floats(x))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/sampler_reference.json")
    args = ap.parse_args()

    gen = torch.Generator().manual_seed(SEED)
    noise = torch.randn(LATENT, generator=gen, dtype=torch.float32)
    eps = torch.randn((MAX_STEPS, *LATENT), generator=gen, dtype=torch.float32)

    scaled = DDIMScheduler.from_config(SD15)
    linear = DDIMScheduler.from_config(
        SD15, beta_schedule="linear", beta_start=0.0001, beta_end=0.02
    )
    doc = {
        "generator": "tools/sampler_reference.py",
        "versions": {
            "diffusers": __import__("diffusers").__version__,
            "torch": torch.__version__.split("+")[0],
            "numpy": np.__version__,
        },
        "latent_shape": list(LATENT),
        "noise": floats(noise),
        "eps": [floats(e) for e in eps],
        "alphas_cumprod_scaled_linear": floats(scaled.alphas_cumprod),
        "alphas_cumprod_linear_every_10": floats(linear.alphas_cumprod[::10]),
        "cases": [run_case(*c, noise, eps) for c in CASES],
    }
    with open(args.out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
