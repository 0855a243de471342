"""Regenerate pipeline_tiny.json: pinned outputs of the tiny pipeline for each sampler (fixed seeds, fp32, CPU).

Run from the repository root: `.venv/bin/python tests/pipelines/pinned/regenerate.py`. Only after a change that is
meant to move the numbers; say why in the commit. `pinned_values` is also what the test recomputes.
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from scail2.conditioning import AnimationInputs  # noqa: E402
from scail2.pipelines.pipeline_scail2 import SamplingSettings  # noqa: E402
from scail2.pipelines.segments import plan_segments  # noqa: E402
from tests.pipelines.components import tiny_pipeline  # noqa: E402

PINNED = Path(__file__).with_name("pipeline_tiny.json")
H, W = 32, 64  # the smallest unequal sizes the model takes: latents 4 x 8, driving latents 2 x 4


def pinned_inputs(num_frames: int, mode: str) -> AnimationInputs:
    """A random reference and driving video at H x W with one blue character box; seeded by the frame count."""
    g = torch.Generator().manual_seed(num_frames)
    masks = torch.zeros(num_frames, H, W, 3, dtype=torch.uint8)
    masks[:, 8:24, 12:40] = torch.tensor((0, 0, 255), dtype=torch.uint8)
    ref_mask = torch.full((3, H, W), -1.0)
    ref_mask[:, 4:28, 16:48] = torch.tensor([-1.0, -1.0, 1.0])[:, None, None]
    return AnimationInputs(
        reference=torch.rand(3, H, W, generator=g) * 2 - 1,
        reference_mask=ref_mask,
        driving=torch.randint(0, 256, (num_frames, H, W, 3), generator=g, dtype=torch.uint8),
        driving_masks=masks,
        mode=mode,
        prompt="a robot walks",
        negative_prompt="blurry",
    )


def pinned_values(pipeline=None) -> dict:
    """Per sampler: one guided segment with clean history, and a two-segment video through `__call__`."""
    pipeline = pipeline or tiny_pipeline(seed=1)
    values = {}
    for sampler in ("unipc", "dpm++", "euler"):
        settings = SamplingSettings(
            sampler=sampler, steps=3, shift=5.0, guidance_scale=2.5, segment_length=9, overlap=5
        )
        inputs = pinned_inputs(5, "animate")
        text = pipeline.encode_prompts(inputs.prompt, inputs.negative_prompt, settings.guidance_scale)
        reference = pipeline.encode_reference(inputs)
        conditions = pipeline.prepare_segment(inputs, plan_segments(5, 5, 1)[0])
        g = torch.Generator().manual_seed(4)
        noise, history = (
            torch.randn(1, 16, 2, H // 8, W // 8, generator=g),
            torch.randn(1, 16, 1, H // 8, W // 8, generator=g),
        )
        latent = pipeline.denoise_segment(reference, conditions, text, noise, history, settings, replace=False)
        frames = pipeline(pinned_inputs(13, "replace"), settings, seed=7, progress=False).frames
        values[sampler] = {
            "segment_slice": [round(v, 6) for v in latent[0, 2:4, 1, 1, 2:5].flatten().tolist()],
            "segment_abs_mean": round(latent.abs().mean().item(), 6),
            "video_slice": frames[[0, 6, 12], 20, 40:42].flatten().tolist(),
            "video_mean": round(frames.float().mean().item(), 4),
        }
    return values


def main() -> None:
    with torch.no_grad():
        values = pinned_values()
    PINNED.write_text(json.dumps(values, indent=1) + "\n")
    print(f"wrote {PINNED}")


if __name__ == "__main__":
    main()
