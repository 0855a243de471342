"""SCAIL2Pipeline: a reference character performs the motion of a driving video.

In-memory inputs (already at the target size) go through short numbered steps, each a public method:

    1. check_inputs            shapes, lengths and mode
    2. encode_prompts          umT5 features for the prompt and, under guidance, the negative prompt
    3. encode_reference        reference latent, its 28-channel mask, CLIP tokens, extra reference views
    4. plan_segments           81-frame segments overlapping by 5 (scail2.pipelines.segments)
    5. prepare_segment         half-resolution driving latents and driving masks of one segment
    6. denoise_segment         the sampler loop with clean history re-imposed before and after every step
    7. decode_segment          latents -> pixels
    8. stitch                  drop each later segment's history frames, trim the padding

File reading, resizing and writing live in `scail2.animate`; this class only sees tensors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline
from tqdm.auto import tqdm

from scail2.conditioning import (
    AnimationInputs,
    EncodedReference,
    SegmentConditions,
    VideoLatentCodec,
    compress_driving_masks,
    compress_reference_mask,
    encode_driving,
    history_mask,
    model_video_to_frames,
    pad_frames,
)
from scail2.diffusion.samplers import SAMPLERS, FlowSampler
from scail2.errors import Scail2Error
from scail2.models.encoders import clip_image_features, clip_pixel_values, encode_prompts
from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel
from scail2.modes import MODES
from scail2.pipelines.segments import Segment, plan_segments


@dataclass(frozen=True)
class SamplingSettings:
    """Sampler, steps, timestep shift, text guidance and segmenting of one generation."""

    sampler: str = "unipc"
    steps: int = 40
    shift: float = 5.0
    guidance_scale: float = 5.0
    segment_length: int = 81
    overlap: int = 5

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise Scail2Error(f"--sampler {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        if self.steps < 1:
            raise Scail2Error(f"--steps must be at least 1, got {self.steps}")
        if self.shift <= 0:
            raise Scail2Error(f"--shift must be positive, got {self.shift}")


# Named sampler presets (spec 5.3): upstream's defaults, and the fast DPM++ preset of the MLX port.
SAMPLING_PRESETS: dict[str, SamplingSettings] = {
    "quality": SamplingSettings(sampler="unipc", steps=40, shift=5.0, guidance_scale=5.0),
    "fast": SamplingSettings(sampler="dpm++", steps=16, shift=5.0, guidance_scale=5.0),
}


@dataclass
class AnimationResult:
    frames: torch.Tensor  # [T, H, W, 3] uint8
    segments: list[Segment]
    timings: dict[str, float]


def denoise(transformer, device: torch.device, reference: EncodedReference, conditions: SegmentConditions,
            text: torch.Tensor, noise: torch.Tensor, history: torch.Tensor | None, settings: SamplingSettings,
            replace: bool, autocast_dtype: torch.dtype | None = None, progress=None) -> torch.Tensor:
    """The sampler loop of one segment. `text` is [1, L, D], or [2, L, D] = [negative, prompt] for guidance (both
    passes in one batched forward). `history` [1, z, t_h, h, w] is re-imposed before and after every step."""
    batch, guided = text.shape[0], text.shape[0] == 2
    _, _, frames, height, width = noise.shape
    repeat = lambda t: None if t is None else t.to(device).expand(batch, *t.shape[1:])  # noqa: E731
    zeros = reference.mask.new_zeros(1, reference.mask.shape[1], frames, height, width)
    kwargs = dict(
        encoder_hidden_states=text.to(device), ref_latents=repeat(reference.latent),
        ref_masks=repeat(torch.cat([reference.mask, zeros], 2)), pose_latents=repeat(conditions.pose_latents),
        driving_masks=repeat(conditions.driving_masks), image_embeds=repeat(reference.image_embeds), replace=replace,
        extra_ref_latents=repeat(reference.extra_latents), extra_ref_masks=repeat(reference.extra_masks),
    )
    latent = noise.to(device).clone()
    history_frames = 0 if history is None else history.shape[2]
    if history_frames:
        kwargs["history_mask"] = repeat(history_mask(frames, history_frames, height, width, device=device)[None])
        latent[:, :, :history_frames] = history.to(device)
    sampler = FlowSampler(settings.sampler, settings.steps, settings.shift)
    for index, timestep in enumerate(sampler.timesteps):
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            velocity = transformer(latent.expand(batch, *latent.shape[1:]), timestep.to(device).expand(batch),
                                   **kwargs).sample.float()
        if guided:
            unconditional, conditional = velocity.chunk(2)
            velocity = unconditional + settings.guidance_scale * (conditional - unconditional)
        latent = sampler.step(velocity, index, latent)
        if history_frames:
            latent[:, :, :history_frames] = history.to(device)
        if progress is not None:
            progress.update(1)
    return latent


class SCAIL2Pipeline(DiffusionPipeline):
    r"""Skeleton-free character animation with the SCAIL-2 transformer.

    Components: `transformer` (SCAIL2Transformer3DModel), `vae` (AutoencoderKLWan), and optionally
    `text_encoder` + `tokenizer` (UMT5EncoderModel) and `image_encoder` (CLIPVisionModel). Without a text
    encoder the prompt is ignored (small models trained without text); without an image encoder the
    transformer must be a "t2v" model (no CLIP tokens).
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->transformer->vae"
    _optional_components = ["text_encoder", "tokenizer", "image_encoder"]

    def __init__(self, transformer: SCAIL2Transformer3DModel, vae, text_encoder=None, tokenizer=None,
                 image_encoder=None):
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              image_encoder=image_encoder)

    @property
    def codec(self) -> VideoLatentCodec:
        return VideoLatentCodec(self.vae)

    # 1. -----------------------------------------------------------------------------------------------------
    def check_inputs(self, inputs: AnimationInputs) -> None:
        """Raise Scail2Error on inconsistent inputs (the file layer names files; this names tensors)."""
        if inputs.mode not in MODES:
            raise Scail2Error(f"mode must be one of {', '.join(MODES)}, got {inputs.mode!r}")
        if inputs.reference.ndim != 3 or inputs.reference.shape[0] != 3:
            raise Scail2Error(f"reference must be [3, H, W], got {tuple(inputs.reference.shape)}")
        height, width = inputs.reference.shape[1:]
        if height % 32 or width % 32:
            raise Scail2Error(f"reference is {width}x{height}; width and height must be multiples of 32")
        expected = {"reference_mask": (3, height, width)}
        for name, need in expected.items():
            if tuple(getattr(inputs, name).shape) != need:
                raise Scail2Error(f"{name} has shape {tuple(getattr(inputs, name).shape)} but needs {need}")
        frames = inputs.driving.shape[0]
        if inputs.driving.ndim != 4 or tuple(inputs.driving.shape[1:]) != (height, width, 3) or frames < 1:
            raise Scail2Error(f"driving must be [T, {height}, {width}, 3] with T >= 1, got {tuple(inputs.driving.shape)}")
        if tuple(inputs.driving_masks.shape[1:]) != (height, width, 3):
            raise Scail2Error(f"driving_masks must be [T, {height}, {width}, 3], got {tuple(inputs.driving_masks.shape)}")
        if inputs.driving_masks.shape[0] != frames:
            raise Scail2Error(f"driving_masks has {inputs.driving_masks.shape[0]} frames but the driving video has "
                              f"{frames}; give one mask frame per driving frame")
        for image, mask in inputs.extra_references:
            if tuple(image.shape) != (3, height, width) or tuple(mask.shape) != (3, height, width):
                raise Scail2Error(f"extra references must be [3, {height}, {width}] image and mask pairs")
        if self.image_encoder is None and self.transformer.config.model_type == "i2v":
            raise Scail2Error("this i2v transformer needs an image encoder; the model folder has none")

    # 2. -----------------------------------------------------------------------------------------------------
    def encode_prompts(self, prompt: str, negative_prompt: str, guidance_scale: float) -> torch.Tensor:
        """Text features [B, L, text_dim]: [negative, prompt] when guided (B = 2), else [prompt] (B = 1).

        Both rows are zero-padded to the same length; the transformer zero-pads to text_len anyway.
        """
        cfg = self.transformer.config
        if self.text_encoder is None:
            return torch.zeros(1, 1, cfg.text_dim, device=self.device)
        prompts = [negative_prompt, prompt] if guidance_scale > 1 else [prompt]
        features = encode_prompts(self.text_encoder, self.tokenizer, prompts, text_len=cfg.text_len)
        longest = max(f.shape[0] for f in features)
        padded = [torch.nn.functional.pad(f.float(), (0, 0, 0, longest - f.shape[0])) for f in features]
        return torch.stack(padded).to(self.device)

    # 3. -----------------------------------------------------------------------------------------------------
    def encode_reference(self, inputs: AnimationInputs) -> EncodedReference:
        codec = self.codec
        image_embeds = None
        if self.image_encoder is not None and self.transformer.config.model_type == "i2v":
            pixels = clip_pixel_values(inputs.reference, size=self.image_encoder.config.image_size)
            image_embeds = clip_image_features(self.image_encoder, pixels).float()
        latent = codec.encode(inputs.reference[None, :, None])  # [1, z, 1, h, w]
        mask = compress_reference_mask(inputs.reference_mask)
        encoded = EncodedReference(latent=latent, mask=mask.to(latent.device), image_embeds=image_embeds)
        if inputs.extra_references:
            images = torch.stack([image for image, _ in inputs.extra_references], dim=1)  # [3, N, H, W]
            # each view is its own 1-frame video, so encode them as a batch
            encoded.extra_latents = codec.encode(images.permute(1, 0, 2, 3)[:, :, None]).permute(2, 1, 0, 3, 4)
            masks = [compress_reference_mask(mask) for _, mask in inputs.extra_references]
            encoded.extra_masks = torch.cat(masks, dim=2).to(latent.device)
        return encoded

    # 4. -----------------------------------------------------------------------------------------------------
    @staticmethod
    def plan_segments(num_frames: int, settings: SamplingSettings) -> list[Segment]:
        return plan_segments(num_frames, settings.segment_length, settings.overlap)

    # 5. -----------------------------------------------------------------------------------------------------
    def prepare_segment(self, inputs: AnimationInputs, segment: Segment) -> SegmentConditions:
        """Driving frames and masks of one segment (padded to its length) -> half-resolution conditions."""
        window = slice(segment.start, segment.start + segment.real_frames)
        pose_latents = encode_driving(self.codec, pad_frames(inputs.driving[window], segment.length))
        driving_masks = compress_driving_masks(pad_frames(inputs.driving_masks[window], segment.length))
        return SegmentConditions(pose_latents=pose_latents, driving_masks=driving_masks.to(pose_latents.device))

    # 6. -----------------------------------------------------------------------------------------------------
    def denoise_segment(self, reference: EncodedReference, conditions: SegmentConditions, text: torch.Tensor,
                        noise: torch.Tensor, history: torch.Tensor | None, settings: SamplingSettings,
                        replace: bool, autocast_dtype: torch.dtype | None = None, progress=None) -> torch.Tensor:
        """Run the sampler on one segment; see `denoise`."""
        return denoise(self.transformer, self.device, reference, conditions, text, noise, history, settings, replace,
                       autocast_dtype, progress)

    # 7. -----------------------------------------------------------------------------------------------------
    def decode_segment(self, latent: torch.Tensor) -> torch.Tensor:
        """[1, z, T_lat, h, w] -> [3, T, H, W] in [-1, 1]; a NaN anywhere is an error, not a black video."""
        video = self.codec.decode(latent)[0]
        if not torch.isfinite(video).all():
            raise Scail2Error("the generated video contains NaN or infinite values; try --dtype fp32 or fewer "
                              "LoRAs / a lower LoRA scale")
        return video

    # 8. -----------------------------------------------------------------------------------------------------
    @staticmethod
    def stitch(decoded: list[torch.Tensor], segments: list[Segment]) -> torch.Tensor:
        """Concatenate each segment's new frames (history and padding dropped) -> [T, H, W, 3] uint8."""
        parts = [video[:, seg.history_frames : seg.real_frames] for video, seg in zip(decoded, segments)]
        return model_video_to_frames(torch.cat(parts, dim=1))

    def history_latent(self, previous: torch.Tensor, segment: Segment) -> torch.Tensor | None:
        """The last `overlap` decoded frames of the previous segment, re-encoded: [1, z, t_h, h, w]."""
        if not segment.history_frames:
            return None
        return self.codec.encode(previous[None, :, -segment.history_frames :])

    @torch.no_grad()
    def __call__(self, inputs: AnimationInputs, settings: SamplingSettings = SamplingSettings(), seed: int = 0,
                 autocast_dtype: torch.dtype | None = None, progress: bool = True) -> AnimationResult:
        timings: dict[str, float] = {}
        start = time.perf_counter()
        self.check_inputs(inputs)
        text = self.encode_prompts(inputs.prompt, inputs.negative_prompt, settings.guidance_scale)
        reference = self.encode_reference(inputs)
        segments = self.plan_segments(inputs.driving.shape[0], settings)
        timings["encode_s"] = time.perf_counter() - start
        generator = torch.Generator().manual_seed(seed)
        decoded: list[torch.Tensor] = []
        # a context manager, so an error message is never interleaved with a half-drawn bar
        with tqdm(total=len(segments) * settings.steps, disable=not progress, unit="step", desc="denoise") as bar:
            for segment in segments:
                bar.set_description(f"segment {segment.index + 1}/{len(segments)}")
                conditions = self.prepare_segment(inputs, segment)
                history = self.history_latent(decoded[-1], segment) if decoded else None
                noise = torch.randn(1, reference.latent.shape[1], conditions.pose_latents.shape[2],
                                    *reference.latent.shape[-2:], generator=generator)
                tic = time.perf_counter()
                latent = self.denoise_segment(reference, conditions, text, noise, history, settings,
                                              replace=inputs.mode == "replace", autocast_dtype=autocast_dtype,
                                              progress=bar)
                timings[f"segment_{segment.index}_denoise_s"] = time.perf_counter() - tic
                decoded.append(self.decode_segment(latent))
        frames = self.stitch(decoded, segments)
        timings["total_s"] = time.perf_counter() - start
        return AnimationResult(frames=frames, segments=segments, timings=timings)
