"""One generation step through SCAIL2Pipeline (CFG batched) and the VAE encode/decode of one segment.

On a GPU: `python -m benchmarks.bench_pipeline --preset 14b --height 512 --width 896 --frames 81`
(random bf16 weights; the real Wan2.1 VAE architecture with random weights). On a CPU, use the defaults
(tiny transformer, narrow VAE). Prints a table: seconds per denoising step, VAE encode and decode, peak memory.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import random_transformer, timed
from scail2.conditioning import AnimationInputs
from scail2.pipelines.pipeline_scail2 import SamplingSettings, SCAIL2Pipeline
from scail2.pipelines.segments import plan_segments


def build(preset: str, vae_width: int, device: torch.device, dtype: torch.dtype) -> SCAIL2Pipeline:
    from diffusers import AutoencoderKLWan

    transformer = random_transformer(preset, device, dtype, model_type="t2v").eval()
    vae = AutoencoderKLWan(base_dim=vae_width).to(device).eval()
    return SCAIL2Pipeline(transformer=transformer, vae=vae)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--vae-width", type=int, default=96, help="96 is the real Wan2.1 VAE")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipe = build(args.preset, args.vae_width, device, dtype)
    h, w, t = args.height, args.width, args.frames
    inputs = AnimationInputs(
        reference=torch.rand(3, h, w) * 2 - 1,
        reference_mask=torch.ones(3, h, w),
        driving=torch.randint(0, 255, (t, h, w, 3), dtype=torch.uint8),
        driving_masks=torch.zeros(t, h, w, 3, dtype=torch.uint8),
    )
    settings = SamplingSettings(sampler="unipc", steps=args.steps, guidance_scale=5.0)
    segment = plan_segments(t, settings.segment_length, settings.overlap)[0]
    with torch.no_grad():
        reference = pipe.encode_reference(inputs)
        conditions, encode_s = timed(lambda: pipe.prepare_segment(inputs, segment), device)
        video = torch.rand(1, 3, segment.length, h, w, device=device) * 2 - 1
        latent, full_encode_s = timed(lambda: pipe.codec.encode(video), device)
        text = torch.zeros(2, 1, pipe.transformer.config.text_dim, device=device)  # CFG: [negative, prompt]
        noise = torch.randn(1, 16, *latent.shape[2:])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _, denoise_s = timed(
            lambda: pipe.denoise_segment(
                reference,
                conditions,
                text,
                noise,
                None,
                settings,
                replace=False,
                autocast_dtype=torch.bfloat16 if device.type == "cuda" else None,
            ),
            device,
        )
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        _, decode_s = timed(lambda: pipe.codec.decode(latent), device)
    print("| preset | size | CFG batch | s / step | VAE encode (full res) | VAE decode | driving prep | peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.preset} | {w}x{h}x{segment.length} | 2 | {denoise_s / args.steps:.2f} | {full_encode_s:.2f} s | "
        f"{decode_s:.2f} s | {encode_s:.2f} s | {peak:.1f} |"
    )


if __name__ == "__main__":
    main()
