"""What `--dtype` costs and saves: weight bytes, weight copies per forward, RoPE table time, VAE dtype on CPU.

    .venv/bin/python -m benchmarks.bench_precision [--preset demo] [--device cpu]

Prints four tables:
1. transformer weight bytes of each preset by loading dtype (built on the meta device: nothing is allocated);
   "fp32 + autocast" adds the bf16 copy of every matmul weight that autocast makes per forward;
2. one forward of `--preset` with random weights on `--device`: bytes of weights copied or cast during the
   forward (a dispatch spy on copy ops that read a parameter) and the time, per weights dtype and autocast;
3. the RoPE rotations of one 14B segment (81 frames at 512x896: 48,832 tokens): the float64 table rounded to
   fp32 (what each new shape cost before) against the per-axis tables gathered on the device;
4. the bundled demo VAE decoding its own latent of a 17-frame 128x128 clip in fp32 and bf16 on this CPU: CPU
   seconds of one thread, and the bf16 error (PSNR against fp32).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.common import build_inputs, random_transformer, timed
from scail2.models.state_dict_io import kept_in_fp32
from scail2.models.transformer_scail2 import SCAIL2_PRESETS, SCAIL2Transformer3DModel, scail2_rope_table

CAST_OPS = {torch.ops.aten._to_copy, torch.ops.aten.copy_, torch.ops.aten._autocast_to_reduced_precision}


class WeightCopyBytes(TorchDispatchMode):
    """Sums the bytes of every copy or cast whose source is a parameter's storage."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in CAST_OPS:
            source = args[1] if func.overloadpacket is torch.ops.aten.copy_ else args[0]
            if isinstance(source, torch.Tensor) and source.untyped_storage().data_ptr() in self.storages:
                self.bytes += out.numel() * out.element_size()
        return out


def weight_bytes_table() -> None:
    print("| preset | parameters | kept fp32 | fp32 GB | bf16 GB | fp32 + autocast GB |")
    print("|---|---|---|---|---|---|")
    for preset in ("14b", "1.3b"):
        with torch.device("meta"):
            model = SCAIL2Transformer3DModel.from_preset(preset)
        keep = model._keep_in_fp32_modules
        total = sum(p.numel() for p in model.parameters())
        kept = sum(p.numel() for n, p in model.named_parameters() if kept_in_fp32(n, keep))
        matmul = sum(p.numel() for n, p in model.named_parameters() if p.ndim >= 2 and not kept_in_fp32(n, keep))
        print(
            f"| {preset} | {total:,} | {kept:,} | {4 * total / 1e9:.2f} | {(2 * (total - kept) + 4 * kept) / 1e9:.2f} "
            f"| {(4 * total + 2 * matmul) / 1e9:.2f} |"
        )


def forward(model, inputs, autocast: bool, device: torch.device) -> torch.Tensor:
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        return model(**inputs).sample


def forward_table(preset: str, device: torch.device) -> None:
    print("| preset | weights | autocast | weight bytes copied per forward | seconds |")
    print("|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        model = random_transformer(preset, device, dtype).eval()
        inputs, _ = build_inputs(model, 1, 17, 128, 128, device, min(16, model.config.text_len))
        for autocast in (False, True):
            # a fresh autocast region per forward, as per denoising step (autocast caches casts within one)
            run = lambda m=model, x=inputs, a=autocast: forward(m, x, a, device)  # noqa: E731
            run()  # warm-up (RoPE tables)
            spy = WeightCopyBytes(model)
            with spy:
                run()
            _, seconds = timed(run, device)
            name = str(dtype).removeprefix("torch.")
            print(f"| {preset} | {name} | {'bf16' if autocast else 'off'} | {spy.bytes:,} | {seconds:.3f} |")


def rope_table(device: torch.device) -> None:
    with torch.device("meta"):
        model = SCAIL2Transformer3DModel.from_preset("14b")
    cfg, grid = model.config, (21, 32, 56)  # latent frames, video patch grid of 81 x 512 x 896
    start = time.perf_counter()
    exact = torch.view_as_real(
        scail2_rope_table(*grid, 0, False, cfg.dim // cfg.num_heads, cfg.rope_theta, cfg.rope_offset)
    ).float()
    exact = exact.to(device)
    before = time.perf_counter() - start
    _, first = timed(lambda: model.rope_table(*grid, 0, False, device), device)
    model._rope_cache.clear()
    table, other = timed(lambda: model.rope_table(*grid, 0, True, device), device)
    difference = (model.rope_table(*grid, 0, False, device) - exact).abs().max().item()
    print("| RoPE rotations, 48,832 tokens | ms | max difference |")
    print("|---|---|---|")
    print(f"| float64 table on CPU, rounded, moved (each new shape before) | {1e3 * before:.1f} | |")
    print(
        f"| per-axis tables built, then gathered (once per model and device) | {1e3 * first:.1f} | {difference:.1e} |"
    )
    print(f"| gathered on the device (each new shape now) | {1e3 * other:.1f} | |")


def vae_table() -> None:
    from diffusers import AutoencoderKLWan

    from scail2 import bundled

    torch.set_num_threads(1)
    folder = bundled.bundled_model_dir() / "vae"
    vaes = {
        dtype: AutoencoderKLWan.from_pretrained(folder, dtype=dtype).eval() for dtype in (torch.float32, torch.bfloat16)
    }
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3 * 17, 8, 8, generator=g)
    video = torch.nn.functional.interpolate(coarse, size=(128, 128), mode="bilinear").view(1, 3, 17, 128, 128) * 2 - 1
    print("| demo VAE decode, 17 x 128 x 128, CPU | CPU s (1 thread) | PSNR vs fp32 dB |")
    print("|---|---|---|")
    with torch.no_grad():
        latent = vaes[torch.float32].encode(video).latent_dist.mode()
        outputs = {}
        for dtype, vae in vaes.items():
            start = time.thread_time()
            outputs[dtype] = vae.decode(latent.to(dtype)).sample.float().clamp(-1, 1)
            seconds = time.thread_time() - start
            error = (outputs[dtype] - outputs[torch.float32]).square().mean()
            psnr = "" if dtype == torch.float32 else f"{10 * torch.log10(4 / error).item():.1f}"
            print(f"| {str(dtype).removeprefix('torch.')} | {seconds:.2f} | {psnr} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", choices=sorted(SCAIL2_PRESETS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    weight_bytes_table()
    print()
    forward_table(args.preset, device)
    print()
    rope_table(device)
    print()
    vae_table()


if __name__ == "__main__":
    main()
