"""The cost of a LoRA fused into the weights versus kept unfused (forward hooks), per forward.

A random transformer and a random rank-R LoRA in the step-distill (lightx2v) layout on every linear, norm and
modulation; prints the forward time without a LoRA, fused and unfused, the time to apply each, the unfused
LoRA's buffer bytes and the largest output difference between the two modes.

On a GPU: `python -m benchmarks.bench_lora --preset 14b --height 512 --width 896 --frames 81 --rank 64`
(bf16 weights, 48,832 tokens). On a CPU: `python -m benchmarks.bench_lora --preset 1.3b --layers 2`.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from benchmarks.common import build_inputs, random_transformer, timed
from scail2.models.lora import apply_lora
from scail2.models.lora_unfused import attach_lora


def distill_lora(model: nn.Module, rank: int) -> dict[str, torch.Tensor]:
    """lora_down / lora_up / alpha / diff_b per linear, diff per affine norm, diff_m per block (bf16)."""
    tensors = {}

    def small(*shape: int) -> torch.Tensor:
        return (0.01 * torch.randn(*shape)).to(torch.bfloat16)

    for name, module in model.named_modules():
        key = f"diffusion_model.{name}"
        if isinstance(module, nn.Linear):
            tensors[f"{key}.lora_down.weight"] = small(rank, module.in_features)
            tensors[f"{key}.lora_up.weight"] = small(module.out_features, rank)
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
            tensors[f"{key}.diff_b"] = small(module.out_features)
        elif "norm" in name and getattr(module, "weight", None) is not None:
            tensors[f"{key}.diff"] = small(*module.weight.shape)
    for index, block in enumerate(model.blocks):
        tensors[f"diffusion_model.blocks.{index}.diff_m"] = small(*block.modulation.shape)
    return tensors


def steady_forward(model, inputs, device, repeats: int) -> tuple[torch.Tensor, float]:
    with torch.no_grad():
        runs = [timed(lambda: model(**inputs).sample, device) for _ in range(repeats + 1)]
    return runs[-1][0], min(seconds for _, seconds in runs[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--layers", type=int, help="fewer blocks than the preset (CPU runs)")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    overrides = {"num_layers": args.layers} if args.layers else {}
    torch.manual_seed(0)
    model = random_transformer(args.preset, device, dtype, **overrides).eval()
    inputs, tokens = build_inputs(model, 1, args.frames, args.height, args.width, device, model.config.text_len)
    lora = distill_lora(model, args.rank)
    original = {name: value.detach().clone() for name, value in model.state_dict().items()}

    _, base = steady_forward(model, inputs, device, args.repeats)
    handle, attach_s = timed(lambda: attach_lora(model, lora), device)
    unfused_out, unfused = steady_forward(model, inputs, device, args.repeats)
    buffers = sum(b.numel() * b.element_size() for n, b in model.named_buffers() if "scail2_lora" in n)
    handle.remove()
    _, fuse_s = timed(lambda: apply_lora(model, lora), device)
    fused_out, fused = steady_forward(model, inputs, device, args.repeats)
    model.load_state_dict(original)
    difference = (unfused_out.float() - fused_out.float()).abs().max().item()

    print(
        "| preset | blocks | tokens | dtype | rank | base s | fused s | unfused s | unfused/base | fuse s | attach s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.preset} | {model.config.num_layers} | {tokens:,} | {args.dtype} | {args.rank} | {base:.3f} | "
        f"{fused:.3f} | {unfused:.3f} | {unfused / base:.3f} | {fuse_s:.2f} | {attach_s:.2f} |"
    )
    print(f"\nunfused LoRA buffers: {buffers / 2**20:.1f} MiB; max |unfused - fused| output: {difference:.2e}")


if __name__ == "__main__":
    main()
