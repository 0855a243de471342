"""The memory plan's predictions beside measured bytes, and the plan of the 14B model for common cards.

    python -m benchmarks.bench_memory_plan                 # CPU: tensor bytes (live-bytes tracker)
    python -m benchmarks.bench_memory_plan --device cuda   # GPU: torch.cuda.max_memory_allocated, 14B included

Measured: one transformer forward under no_grad (its RoPE table included), a VAE decode and encode of one
segment, each above the weights and inputs that existed before. Then the units one transformer block holds per
stage, chunked and as one chunk, beside the unchunked forward's; then `scail2 plan --model 14b` for 24, 48 and
80 GiB cards at 81x512x896. Prints Markdown tables.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import build_inputs, random_transformer
from scail2.models.transformer_scail2 import SCAIL2TransformerBlock
from scail2.pipelines.live_bytes import peak_tensor_bytes
from scail2.pipelines.memory_activations import (
    measure_block_memory,
    transformer_forward_bytes,
    transformer_tokens,
    vae_decode_bytes,
    vae_encode_bytes,
)
from scail2.pipelines.memory_inventory import ModelFolder, meta_module
from scail2.pipelines.memory_plan import GIB, JobShape, cards_table, choose_options, usable_gpu_bytes

# (name, preset, overrides, frames x height x width): the tests' sizes on CPU, the released size on a GPU.
FORWARDS = [
    ("tiny t2v", "tiny", dict(model_type="t2v"), (17, 128, 192)),
    ("mid i2v", "demo", dict(model_type="i2v", num_layers=2, text_dim=64, text_len=32, image_dim=48), (17, 256, 384)),
]
FORWARDS_14B = [("14b", "14b", dict(num_layers=2), (81, 512, 896))]
# (name, config, frames x height x width, tiles as enable_tiling's arguments: smaller than the frame on CPU)
VAES = [
    ("tiny VAE", dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1), (17, 64, 96), (32, 32, 24, 24)),
    ("Wan2.1 VAE / 6", dict(base_dim=16, z_dim=16), (21, 64, 96), (32, 32, 24, 24)),
]
VAES_GPU = [("Wan2.1 VAE", dict(base_dim=96, z_dim=16), (81, 512, 896), ())]


def measure(fn, device: torch.device) -> int:
    """Peak bytes `fn` allocates: tensor bytes on CPU, the caching allocator's peak on CUDA."""
    if device.type != "cuda":
        return peak_tensor_bytes(fn)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():
        fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def forward_rows(device: torch.device, forwards) -> list[tuple]:
    rows = []
    for name, preset, overrides, (frames, height, width) in forwards:
        for precision in ("fp32", "bf16"):
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            model = random_transformer(preset, device, dtype, **overrides).eval()
            text = model.config.text_len
            for batch in (1, 2):
                inputs, _ = build_inputs(model, batch, frames, height, width, device, text)
                autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
                with torch.no_grad(), autocast:
                    model(**inputs)  # builds the RoPE table, which stays for the segment
                    measured = measure(lambda: model(**inputs), device)  # noqa: B023
                measured += sum(t.numel() * t.element_size() for t in model._rope_cache.values())
                tokens = transformer_tokens(dict(model.config), frames, height, width)
                predicted = transformer_forward_bytes(dict(model.config), tokens, batch, precision)
                rows.append((f"forward {name}, {precision}, batch {batch}", tokens.total, predicted, measured))
    return rows


def vae_rows(device: torch.device, vaes) -> list[tuple]:
    from diffusers import AutoencoderKLWan

    rows = []
    for name, config, (frames, height, width), tiles in vaes:
        real = AutoencoderKLWan(**config).eval().to(device)
        meta = meta_module("vae", {"_class_name": "AutoencoderKLWan", **config}).eval()
        for vae in (real, meta):
            vae.enable_tiling(*tiles)
        latent_frames, h, w = (frames - 1) // 4 + 1, height // 8, width // 8
        for tiled in (False, True):
            for vae in (real, meta):
                vae.use_tiling = tiled
            z = torch.randn(1, 16, latent_frames, h, w, device=device)
            measured = measure(lambda: real.decode(z).sample.float().clamp(-1, 1), device)  # noqa: B023
            predicted = vae_decode_bytes(meta, latent_frames, h, w, tiled)
            rows.append(
                (f"decode {name}{', tiled' if tiled else ''}", f"{frames}x{height}x{width}", predicted, measured)
            )
        for vae in (real, meta):
            vae.use_tiling = False
        pixels = torch.rand(1, 3, frames, height, width, device=device)
        measured = measure(lambda: real.encode(pixels.clone()).latent_dist.mode().float(), device)  # noqa: B023
        rows.append(
            (
                f"encode {name}",
                f"{frames}x{height}x{width}",
                vae_encode_bytes(meta, frames, height, width, False),
                measured,
            )
        )
    return rows


# Units of the block before it ran in chunks (the whole-sequence forward, measured with `measure_block_memory`
# at dim 256, 2048 tokens): (stage, precision) -> units.
UNCHUNKED_UNITS = {
    ("attention", "fp32"): 7.0,
    ("attention", "bf16"): 6.5,
    ("ffn (ffn_dim 4 dim)", "fp32"): 12.0,
    ("ffn (ffn_dim 4 dim)", "bf16"): 8.0,
    ("cross-attention (context 2 S)", "fp32"): 10.0,
    ("cross-attention (context 2 S)", "bf16"): 11.5,
}
BLOCK_STAGES = {
    "attention": {},
    "ffn (ffn_dim 4 dim)": {"ffn_dim": 1024},
    "cross-attention (context 2 S)": {"context": 4096},
}


def block_rows() -> list[tuple]:
    """(stage, precision, unchunked, one chunk, chunked) units of one block at dim 256, 2048 tokens, on CPU."""
    rows = []
    for (stage, precision), unchunked in UNCHUNKED_UNITS.items():
        chunked = measure_block_memory(precision, **BLOCK_STAGES[stage])
        units, SCAIL2TransformerBlock.chunk_units = SCAIL2TransformerBlock.chunk_units, 1e9
        try:
            one_chunk = measure_block_memory(precision, **BLOCK_STAGES[stage])
        finally:
            SCAIL2TransformerBlock.chunk_units = units
        rows.append((stage, precision, unchunked, one_chunk, chunked))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cards", type=float, nargs="+", default=[24, 48, 80], help="GiB")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    rows = forward_rows(device, FORWARDS + (FORWARDS_14B if cuda else []))
    rows += vae_rows(device, VAES + (VAES_GPU if cuda else []))
    print(f"| measured on {device.type} | tokens / size | predicted MiB | measured MiB | predicted / measured |")
    print("|---|---:|---:|---:|---:|")
    for what, size, predicted, measured in rows:
        print(f"| {what} | {size} | {predicted / 2**20:.1f} | {measured / 2**20:.1f} | {predicted / measured:.3f} |")

    print("\n| block stage (dim 256, 2048 tokens, CPU) | precision | unchunked units | one chunk | chunked |")
    print("|---|---|---:|---:|---:|")
    for stage, precision, unchunked, one_chunk, chunked in block_rows():
        print(f"| {stage} | {precision} | {unchunked:.2f} | {one_chunk:.2f} | {chunked:.2f} |")

    folder = ModelFolder.from_preset("14b")
    job = JobShape(512, 896, 81)
    plans = []
    for card in args.cards:
        plans.append((card, choose_options(folder, job, usable_gpu_bytes(card))))
    print(f"\n14b, {job.describe()}, guided (usable = card x 0.95 - 1 GiB; host RAM unchecked)\n")
    print(cards_table(plans))
    lean = choose_options(folder, job, usable_gpu_bytes(24), host_budget=40 * GIB)
    summary = f"{lean.options.label()}, {lean.peak / GIB:.1f} GiB, host RAM {lean.host / GIB:.1f} GiB"
    print(f"\n24 GiB with 40 GiB of host RAM: {summary}")


if __name__ == "__main__":
    main()
