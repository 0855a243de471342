"""Peak memory and time of one guided segment under each memory option (`MemorySettings`).

On a GPU (random bf16 weights, the real Wan2.1 VAE architecture with random weights, precomputed text and CLIP
tokens, so the encoders are left out):

    python -m benchmarks.bench_memory --preset 14b --height 512 --width 896 --frames 81 --vae-width 96

Each row builds the pipeline again on the CPU, applies its options, runs the segment and reports the GPU's peak
allocated memory (`torch.cuda.max_memory_allocated`) over the denoising steps after the first (the steady state)
and over the whole call (encodes and the decode included), beside what the weights alone hold on the GPU once
placed.

On a CPU (the defaults: tiny transformer, narrow VAE) the accelerator is the CPU itself, so the table reports the
peak bytes of the tensors the run creates (`LiveTensorBytes`) instead: activations and copies, not weights.

    python -m benchmarks.bench_memory [--preset tiny] [--rows none/batched,group/sequential/tiled,...]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from benchmarks.common import random_transformer
from scail2.conditioning import AnimationInputs
from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel
from scail2.pipelines.live_bytes import LiveTensorBytes
from scail2.pipelines.memory import MemorySettings, pass_activation_bytes
from scail2.pipelines.memory_activations import transformer_tokens
from scail2.pipelines.pipeline_scail2 import SamplingSettings, SCAIL2Pipeline

# offload/cfg[/tiled]: the options a 80, 48 and 24 GB card would try, lightest last
DEFAULT_ROWS = (
    "none/batched,none/sequential,none/sequential/tiled,model/sequential/tiled,"
    "group/sequential/tiled,sequential/sequential/tiled"
)


def parse_row(row: str) -> MemorySettings:
    offload, cfg_mode, *rest = row.split("/")
    return MemorySettings(offload=offload, cfg_mode=cfg_mode, vae_tiling=rest == ["tiled"])


def build(preset: str, vae_width: int, dtype: torch.dtype, build_device: torch.device) -> SCAIL2Pipeline:
    """Random weights materialised on `build_device` (fast on a GPU), then kept on the CPU until placed."""
    from diffusers import AutoencoderKLWan

    transformer = random_transformer(preset, build_device, dtype).eval().to("cpu")
    vae = AutoencoderKLWan(base_dim=vae_width).eval()
    return SCAIL2Pipeline(transformer=transformer, vae=vae)


def inputs_and_embeds(pipe: SCAIL2Pipeline, frames: int, height: int, width: int):
    cfg, g = pipe.transformer.config, torch.Generator().manual_seed(0)
    inputs = AnimationInputs(
        reference=torch.rand(3, height, width, generator=g) * 2 - 1,
        reference_mask=torch.ones(3, height, width),
        driving=torch.randint(0, 255, (frames, height, width, 3), generator=g, dtype=torch.uint8),
        driving_masks=torch.zeros(frames, height, width, 3, dtype=torch.uint8),
    )
    embeds = dict(
        prompt_embeds=torch.randn(1, cfg.text_len, cfg.text_dim, generator=g),
        negative_prompt_embeds=torch.randn(1, cfg.text_len, cfg.text_dim, generator=g),
    )
    if cfg.model_type == "i2v":
        embeds["image_embeds"] = torch.randn(1, 257, cfg.image_dim, generator=g)
    return inputs, embeds


def weights_on(device: torch.device) -> float:
    return torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def peak_bytes(device: torch.device, tracker) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else tracker.peak


def reset_peak(device: torch.device, tracker) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        tracker.peak = tracker.live


def run_row(args, memory: MemorySettings, device: torch.device) -> dict:
    """Peaks of one segment: over the denoising steps after the first (steady state) and over the whole call."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipe = build(args.preset, args.vae_width, dtype, device)
    pipe.enable_memory_settings(memory, device)
    resident = weights_on(device)
    inputs, embeds = inputs_and_embeds(pipe, args.frames, args.height, args.width)
    settings = SamplingSettings(sampler="unipc", steps=args.steps, guidance_scale=5.0, segment_length=args.frames)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    tracker, peaks = LiveTensorBytes("cpu"), {}

    def on_step(_pipe, step_index, _timestep, _kwargs):
        if step_index == 0:
            peaks["call"] = peak_bytes(device, tracker)
            reset_peak(device, tracker)
        if step_index == settings.steps - 1:
            peaks["steps"] = peak_bytes(device, tracker)
        return {}

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with tracker if device.type == "cpu" else contextlib.nullcontext():
        result = pipe(inputs, settings, autocast_dtype=autocast, progress=False, callback_on_step_end=on_step, **embeds)
    seconds = time.perf_counter() - start
    unit = 2**30 if device.type == "cuda" else 2**20
    whole = max(peaks["call"], peak_bytes(device, tracker))
    del pipe
    return dict(
        resident=resident,
        steps=peaks["steps"] / unit,
        peak=whole / unit,
        step=result.timings["segment_0_denoise_s"] / args.steps,
        total=seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=320, help="over 256 px, so the VAE tiles")
    parser.add_argument("--frames", type=int, default=9, help="one segment of this many frames (4n+1)")
    parser.add_argument("--vae-width", type=int, default=8, help="96 is the real Wan2.1 VAE")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rows", default=DEFAULT_ROWS, help="comma-separated offload/cfg[/tiled] rows")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    with torch.device("meta"):
        cfg = SCAIL2Transformer3DModel.from_preset(args.preset).config
    tokens = transformer_tokens(dict(cfg), args.frames, args.height, args.width).total
    latent = ((args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    precision = "bf16" if device.type == "cuda" else "fp32"
    unit = "GPU GiB" if device.type == "cuda" else "CPU MiB created"
    print(
        f"{args.preset} at {args.width}x{args.height}x{args.frames}: {tokens} tokens, one pass's activation "
        f"estimate {pass_activation_bytes(dict(cfg), latent, 0, precision) / 2**20:.1f} MiB; {device}"
    )
    print(f"| offload | cfg | VAE tiling | weights on GPU GiB | steps peak {unit} | peak {unit} | s / step | total s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for row in args.rows.split(","):
        memory = parse_row(row)
        numbers = run_row(args, memory, device)
        print(
            f"| {memory.offload} | {memory.cfg_mode} | {'on' if memory.vae_tiling else 'off'} | "
            f"{numbers['resident']:.2f} | {numbers['steps']:.2f} | {numbers['peak']:.2f} | {numbers['step']:.2f} | "
            f"{numbers['total']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
