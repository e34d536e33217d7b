#!/usr/bin/env python3
"""PSNR of `dfc run` latents against a reference latent.

For models that diffuse directly in pixel space scaled to [-1, 1] (such as models/shapes, whose
first three latent channels are RGB), this is the image PSNR: both latents are clipped to
[-1, 1], the first `--channels` channels compared, peak-to-peak range 2.

    python tools/latent_psnr.py REF.npz OTHER.npz [OTHER.npz ...] [--channels 3]
"""

import argparse
import math

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    a = np.clip(a, -1.0, 1.0)
    b = np.clip(b, -1.0, 1.0)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(4.0 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference")
    parser.add_argument("others", nargs="+")
    parser.add_argument("--channels", type=int, default=3)
    args = parser.parse_args()
    ref = np.load(args.reference)["latent"][:, : args.channels]
    for path in args.others:
        other = np.load(path)["latent"][:, : args.channels]
        if other.shape != ref.shape:
            raise SystemExit(f"{path}: shape {other.shape} differs from the reference's {ref.shape}")
        print(f"{path}: PSNR {psnr(ref, other):.2f} dB")


if __name__ == "__main__":
    main()
