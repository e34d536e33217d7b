#!/usr/bin/env python3
"""Export a full-size SDXL-architecture UNet (2.57 B parameters, random fp16 weights) to ONNX,
for checking exchange volumes at paper scale with `dfc compile` (the weights' values do not
matter there; only the graph and its shapes do).

The configuration is SDXL base 1.0's UNet, written out here (no model hub needed). The trace
runs at a small latent (16×16) with dynamic batch/height/width/sequence axes, so `dfc compile
--height 128 --width 128` specializes it to 1024×1024 images. The ONNX file is ~5 GB of
external data next to it: not for committing.

    .venv-export/bin/python tools/export_sdxl_full.py --out target/sdxl_full
    dfc compile target/sdxl_full/unet.onnx --gpus 8 --batch 2 --height 128 --width 128 \\
        --dim sequence=77 -o target/sdxl_plan8
"""

import argparse
import inspect
import os
import time

SDXL_BASE_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,
    norm_num_groups=32,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="target/sdxl_full")
    ap.add_argument("--latent", type=int, default=16, help="trace latent size (rows = columns)")
    args = ap.parse_args()

    import torch
    from diffusers import UNet2DConditionModel

    torch.set_num_threads(2)
    torch.manual_seed(0)
    t0 = time.time()
    torch.set_default_dtype(torch.float16)
    unet = UNet2DConditionModel(**SDXL_BASE_UNET).eval()
    torch.set_default_dtype(torch.float32)
    n = sum(p.numel() for p in unet.parameters())
    print(f"built SDXL UNet: {n:,} parameters ({time.time() - t0:.0f} s)", flush=True)

    class Wrapper(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
            return self.unet(sample, timestep, encoder_hidden_states,
                             added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
                             return_dict=False)[0]

    h = args.latent
    half = torch.float16
    inputs = (
        torch.randn(2, 4, h, h, dtype=half),
        torch.tensor([999.0]),
        torch.randn(2, 77, 2048, dtype=half),
        torch.randn(2, 1280, dtype=half),
        torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * 2, dtype=half),
    )
    names = ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
    kw = dict(
        input_names=names,
        output_names=["out_sample"],
        opset_version=17,
        do_constant_folding=False,
        dynamic_axes={
            "sample": {0: "batch", 2: "height", 3: "width"},
            "encoder_hidden_states": {0: "batch", 1: "sequence"},
            "text_embeds": {0: "batch"},
            "time_ids": {0: "batch"},
            "out_sample": {0: "batch", 2: "height", 3: "width"},
        },
    )
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kw["dynamo"] = False
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "unet.onnx")
    t0 = time.time()
    with torch.no_grad():
        torch.onnx.export(Wrapper(unet), inputs, path, **kw)
    print(f"exported {path} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
