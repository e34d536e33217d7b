#!/usr/bin/env python3
"""Conditioning for `dfc run` / `dfc compare` on models/shapes: an npz with
`encoder_hidden_states` = [null tokens × n ‖ class tokens of each class] (CFG batch 2n,
unconditional half first), from models/shapes/tokens.npz.

    python tools/shapes_cond.py --classes 0 5 10 15 2 7 8 13 -o models/shapes/cond8.npz
"""

import argparse

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="models/shapes/tokens.npz")
    ap.add_argument("--classes", type=int, nargs="+", required=True, help="class indices (shape*4 + colour)")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    t = np.load(args.tokens)
    tokens, null, names = t["tokens"], t["null"], t["class_names"]
    for c in args.classes:
        if not 0 <= c < len(tokens):
            raise SystemExit(f"class {c} is not in 0..{len(tokens) - 1}")
    uncond = np.stack([null] * len(args.classes))
    cond = tokens[args.classes]
    ehs = np.concatenate([uncond, cond]).astype(np.float32)
    np.savez(args.output, encoder_hidden_states=ehs)
    print(f"{args.output}: encoder_hidden_states {ehs.shape}:", ", ".join(str(names[c]) for c in args.classes))


if __name__ == "__main__":
    main()
