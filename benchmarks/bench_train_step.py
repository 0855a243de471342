"""One training step (forward + backward + AdamW) of SCAIL2Transformer3DModel: time and peak memory.

On a GPU, the full-size measurement (14b, bf16, activation checkpointing, LoRA rank 128, 48,832 tokens):
    python -m benchmarks.bench_train_step --preset 14b --height 512 --width 896 --frames 81 --lora-rank 128
On a CPU, the defaults run the tiny preset. Prints a table.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import build_inputs, random_transformer
from scail2.diffusion import flow_matching
from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel


def build_model(preset: str, device: torch.device, lora_rank: int, checkpointing: bool) -> SCAIL2Transformer3DModel:
    storage = torch.bfloat16 if lora_rank and device.type == "cuda" else torch.float32  # frozen base in bf16
    model = random_transformer(preset, device, storage)
    if lora_rank:
        from peft import LoraConfig

        model.requires_grad_(False)
        model.add_adapter(
            LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=["q", "k", "v", "o", "ffn.0", "ffn.2"])
        )
        for name, p in model.named_parameters():
            p.requires_grad_(".lora_" in name)
            if ".lora_" in name:
                p.data = p.data.float()
    if checkpointing:
        model.enable_gradient_checkpointing()
    return model.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--no-checkpointing", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = build_model(args.preset, device, args.lora_rank, not args.no_checkpointing)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, betas=(0.9, 0.95))
    inputs, tokens = build_inputs(
        model, args.batch, args.frames, args.height, args.width, device, min(64, model.config.text_len)
    )
    target = torch.randn_like(inputs["hidden_states"])
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            prediction = model(**inputs).sample
        loss = flow_matching.masked_velocity_loss(prediction.float(), target, torch.ones_like(target[:, :1])).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 0.1)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    print("| preset | tokens | LoRA rank | trainable params | checkpointing | first s | steady s/step | peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.preset} | {tokens:,} | {args.lora_rank or 'full'} | {sum(p.numel() for p in trainable):,} | "
        f"{not args.no_checkpointing} | {times[0]:.2f} | {min(times[1:]):.2f} | {peak:.1f} |"
    )


if __name__ == "__main__":
    main()
