"""Quantised transformer weights (fp8, ComfyUI fp8_scaled, GGUF): error of each format and the memory it takes.

    python -m benchmarks.bench_quantize                  # CPU, about 3 minutes
    python -m benchmarks.bench_quantize --device cuda    # the matmul table on the GPU (fp8 tensor cores: >= 8.9)

Tables:
1. Forward error. A 2-layer dim-256 model with random weights (its block linears take 256 or 512 inputs, so
   every GGUF type applies), each format written to a file the way users get it and loaded with scail2's
   loaders; the output of one forward against the fp32 model and the bf16 (autocast) run: relative L2 and PSNR
   (peak: the range of the fp32 output). The GGUF K-types are encoded by the plain min/max encoders of
   `tests/models/quantized_writers.py`; llama.cpp's files, fitted with a search, have lower errors.
2. Demo videos. The bundled (trained) demo model animates the held-out demo pairs with each format's
   transformer, same seed: PSNR of the frames against the fp32 run. The K-types leave the FFN's second linear
   (704 inputs, no multiple of 256) in F16, as ComfyUI-GGUF does.
3. 14B weights: the transformer's size per format (block linears quantised, the rest bf16).
4. Matmul: one FFN linear of the 14B model ([tokens, 5120] x [13824, 5120]) in bf16, fp8 dequantised per call,
   and fp8 `_scaled_mm`: milliseconds and error against bf16.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from benchmarks.common import timed
from scail2.animate import load_pipeline
from scail2.bundled import BUNDLED_SAMPLING, bundled_model_dir
from scail2.conditioning import AnimationInputs
from scail2.data.pairs import driving_condition
from scail2.demo import pick_demo_pairs
from scail2.eval import metrics
from scail2.models.convert import load_transformer_file
from scail2.models.quantize import (
    BYTES_PER_WEIGHT,
    FP8Linear,
    fp8_matmul,
    is_block_linear,
)
from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel
from scail2.pipelines.pipeline_scail2 import SCAIL2Pipeline
from tests.models.helpers import tiny_inputs, tiny_model
from tests.models.quantized_writers import GGUF_TYPES, write_comfy_fp8, write_gguf

FORWARD_SIZE = dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2, freq_dim=32)
GB = 1e9


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def output_psnr(output: torch.Tensor, reference: torch.Tensor) -> float:
    mse = ((output.float() - reference.float()) ** 2).mean().item()
    peak = (reference.max() - reference.min()).item()
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n{title}\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")


def write_config(model: SCAIL2Transformer3DModel, path: Path) -> str:
    path.write_text(
        json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items() if k[0] != "_"})
    )
    return str(path)


def format_models(model: SCAIL2Transformer3DModel, folder: Path, gguf_types=GGUF_TYPES) -> dict[str, tuple]:
    """{format: (transformer loaded from a file of that format, autocast dtype, fp8 matmul mode)}."""
    state = model.state_dict()
    config = write_config(model, folder / "config.json")
    plain = folder / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(plain))
    fp8 = load_transformer_file(plain, config, torch.float32, quantize="fp8")
    comfy = load_transformer_file(write_comfy_fp8(folder / "comfy.safetensors", state), config, torch.float32)
    models = {
        "bf16 (autocast)": (model, torch.bfloat16, "auto"),
        "fp8, fp32 activations": (fp8, None, "dequantize"),
        "fp8, bf16 dequantised": (fp8, torch.bfloat16, "dequantize"),
        "fp8, bf16 _scaled_mm": (fp8, torch.bfloat16, "scaled_mm"),
        "ComfyUI fp8_scaled": (comfy, torch.bfloat16, "dequantize"),
    }
    for name in gguf_types:
        path = write_gguf(folder / f"{name}.gguf", state, name)
        models[f"GGUF {name}"] = (load_transformer_file(path, config, torch.float32), None, "auto")
    return models


def forward_errors() -> list[list]:
    model = tiny_model(seed=3, **FORWARD_SIZE)
    inputs = tiny_inputs(model)
    with torch.no_grad():
        reference = model(**inputs).sample
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(**inputs).sample
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (variant, autocast, mode) in format_models(model, Path(tmp)).items():
            with (
                torch.no_grad(),
                fp8_matmul(mode),
                torch.autocast("cpu", dtype=autocast or torch.float32, enabled=autocast is not None),
            ):
                out = variant(**inputs).sample
            rows.append(
                [
                    name,
                    relative_error(out, reference),
                    output_psnr(out, reference),
                    relative_error(out, bf16),
                    output_psnr(out, bf16),
                ]
            )
    return rows


def demo_video_psnr(pair_count: int) -> list[list]:
    pipeline = load_pipeline(bundled_model_dir(), torch.device("cpu"))
    pairs = [sample for _, sample in pick_demo_pairs()[:pair_count]]

    def frames(transformer, autocast, mode) -> list[np.ndarray]:
        variant = SCAIL2Pipeline(**{**pipeline.components, "transformer": transformer})
        videos = []
        for sample in pairs:
            inputs = AnimationInputs.from_pair(sample, *driving_condition(sample, "frames"))
            with fp8_matmul(mode):
                result = variant(inputs, BUNDLED_SAMPLING, seed=0, progress=False, autocast_dtype=autocast)
            videos.append(result.frames.numpy())
        return videos

    reference = frames(pipeline.transformer, None, "auto")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = format_models(pipeline.transformer, Path(tmp), gguf_types=("Q8_0", "Q6_K", "Q4_K", "Q2_K"))
        for name, (transformer, autocast, mode) in models.items():
            videos = frames(transformer, autocast, mode)
            psnr = [metrics.psnr(video, ref) for video, ref in zip(videos, reference)]
            rows.append([name, f"{np.mean(psnr):.1f}", f"{min(psnr):.1f}"])
    return rows


def weights_14b() -> list[list]:
    with torch.device("meta"):
        model = SCAIL2Transformer3DModel.from_preset("14b")
    block = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".weight") and is_block_linear(n[:-7]))
    rest = sum(p.numel() for p in model.parameters()) - block
    rows = [["bf16", f"{block / 1e9:.2f} B", f"{2 * (block + rest) / GB:.1f}"]]
    for name, size in BYTES_PER_WEIGHT.items():
        if name in ("float8_e4m3fn", *GGUF_TYPES):
            rows.append([name, f"{block / 1e9:.2f} B", f"{(size * block + 2 * rest) / GB:.1f}"])
    return rows


def matmul_times(device: torch.device, tokens: int, repeats: int) -> list[list]:
    linear = torch.nn.Linear(5120, 13824, device=device, dtype=torch.bfloat16)
    layer = FP8Linear.from_linear(linear)
    x = torch.randn(tokens, 5120, device=device, dtype=torch.bfloat16)
    rows = []
    with torch.no_grad():
        reference = linear(x)
        for name, mode in (("bf16 nn.Linear", None), ("fp8 dequantise", "dequantize"), ("fp8 _scaled_mm", "scaled_mm")):
            run = linear if mode is None else layer
            try:
                with fp8_matmul(mode or "auto"):
                    run(x)  # warm-up
                    seconds = min(timed(lambda run=run: run(x), device)[1] for _ in range(repeats))
                    out = run(x)
            except RuntimeError as error:  # `_scaled_mm` on a GPU without fp8 tensor cores
                rows.append([name, f"unsupported ({str(error).splitlines()[0][:60]})", "-"])
                continue
            rows.append([name, f"{1000 * seconds:.2f}", relative_error(out, reference)])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="device of the matmul table (the others run on the CPU)")
    parser.add_argument("--pairs", type=int, default=4, help="demo pairs of table 2 (0 skips it)")
    parser.add_argument("--tokens", type=int, default=None, help="matmul rows (default 48832 on CUDA, 1024 on CPU)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    header = ["format", "rel. L2 vs fp32", "PSNR dB vs fp32", "rel. L2 vs bf16", "PSNR dB vs bf16"]
    print_table("1. forward error (2-layer dim-256 random model)", header, forward_errors())
    if args.pairs:
        rows = demo_video_psnr(args.pairs)
        print_table(
            f"2. demo videos vs the fp32 run ({args.pairs} pairs, same seed)",
            ["format", "mean PSNR dB", "min PSNR dB"],
            rows,
        )
    print_table("3. 14B transformer weights", ["block linears", "their params", "GB"], weights_14b())
    device = torch.device(args.device)
    tokens = args.tokens or (48832 if device.type == "cuda" else 1024)
    title = f"4. FFN linear [{tokens}, 5120] x [13824, 5120] on {device} (best of {args.repeats})"
    print_table(title, ["path", "ms", "rel. L2 vs bf16"], matmul_times(device, tokens, args.repeats))


if __name__ == "__main__":
    main()
