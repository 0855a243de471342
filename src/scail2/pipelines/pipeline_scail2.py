"""SCAIL2Pipeline: a reference character performs the motion of a driving video.

In-memory inputs (already at the target size) go through short numbered steps, each a public method:

    1. check_inputs            shapes, lengths and mode
    2. encode_prompts          umT5 features for the prompt and, under guidance, the negative prompt
    3. encode_reference        reference latent, its 28-channel mask, CLIP tokens, extra reference views
    4. plan_segments           81-frame segments overlapping by 5 (scail2.pipelines.segments);
       prepare_latents         each segment's initial noise, drawn from the generator or checked when given
    5. prepare_segment         half-resolution driving latents and driving masks of one segment
    6. denoise_segment         `scail2.diffusion.samplers.sample` over `build_velocity_fn`'s transformer closure,
                               clean history re-imposed before and after every step
    7. decode_segment          latents -> pixels
    8. stitch, postprocess     drop each later segment's history frames, trim the padding; the output format

File reading, resizing and writing live in `scail2.animate`; this class only sees tensors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
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
from scail2.diffusion.samplers import SAMPLERS, FlowSampler, sample
from scail2.errors import Scail2Error
from scail2.models.encoders import clip_image_features, clip_pixel_values, encode_prompts
from scail2.models.step_cache import cache_pass, reset_step_cache
from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel
from scail2.modes import MODES
from scail2.pipelines.segments import Segment, plan_segments

OUTPUT_TYPES = ("uint8", "pt", "np", "latent")


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


# Named sampler presets: upstream's defaults, and the fast DPM++ preset of the MLX port (docs/architecture.md,
# "Sampler grids").
SAMPLING_PRESETS: dict[str, SamplingSettings] = {
    "quality": SamplingSettings(sampler="unipc", steps=40, shift=5.0, guidance_scale=5.0),
    "fast": SamplingSettings(sampler="dpm++", steps=16, shift=5.0, guidance_scale=5.0),
}


@dataclass
class AnimationResult:
    frames: torch.Tensor | np.ndarray | list[torch.Tensor]  # by output_type; by default [T, H, W, 3] uint8
    segments: list[Segment]
    timings: dict[str, float]


def transformer_velocity(
    transformer,
    device: torch.device,
    reference: EncodedReference,
    conditions: SegmentConditions,
    text: torch.Tensor,
    replace: bool,
    history_frames: int = 0,
    autocast_dtype: torch.dtype | None = None,
):
    """The transformer over one segment's conditions as `velocity(latent, timestep)` for `samplers.sample`.

    `text` is [1, L, D], or [2, L, D] = [negative, prompt] for guidance: both passes then run as one batched
    forward and the velocity comes back [2, z, T, h, w]. The first `history_frames` latent frames are flagged to
    the model as clean history.
    """
    batch = text.shape[0]
    frames, (height, width) = conditions.pose_latents.shape[2], reference.latent.shape[-2:]
    repeat = lambda t: None if t is None else t.to(device).expand(batch, *t.shape[1:])  # noqa: E731
    zeros = reference.mask.new_zeros(1, reference.mask.shape[1], frames, height, width)
    kwargs = dict(
        encoder_hidden_states=text.to(device),
        ref_latents=repeat(reference.latent),
        ref_masks=repeat(torch.cat([reference.mask, zeros], 2)),
        pose_latents=repeat(conditions.pose_latents),
        driving_masks=repeat(conditions.driving_masks),
        image_embeds=repeat(reference.image_embeds),
        replace=replace,
        extra_ref_latents=repeat(reference.extra_latents),
        extra_ref_masks=repeat(reference.extra_masks),
    )
    if history_frames:
        kwargs["history_mask"] = repeat(history_mask(frames, history_frames, height, width, device=device)[None])

    def velocity(latent: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            with cache_pass(transformer, "guided" if batch == 2 else "cond"):  # a step cache's state per pass
                return transformer(
                    latent.expand(batch, *latent.shape[1:]), timestep.to(device).expand(batch), **kwargs
                ).sample.float()

    return velocity


class SCAIL2Pipeline(DiffusionPipeline):
    r"""Skeleton-free character animation with the SCAIL-2 transformer.

    Components: `transformer` (SCAIL2Transformer3DModel), `vae` (AutoencoderKLWan), and optionally
    `text_encoder` + `tokenizer` (UMT5EncoderModel) and `image_encoder` (CLIPVisionModel). Without a text
    encoder the prompt is ignored (small models trained without text); without an image encoder the
    transformer must be a "t2v" model (no CLIP tokens).
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->transformer->vae"
    _optional_components = ["text_encoder", "tokenizer", "image_encoder"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self, transformer: SCAIL2Transformer3DModel, vae, text_encoder=None, tokenizer=None, image_encoder=None
    ):
        super().__init__()
        self.register_modules(
            transformer=transformer,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            image_encoder=image_encoder,
        )

    @property
    def codec(self) -> VideoLatentCodec:
        return VideoLatentCodec(self.vae)

    # 1. -----------------------------------------------------------------------------------------------------
    def check_inputs(self, inputs: AnimationInputs, image_embeds: torch.Tensor | None = None) -> None:
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
            raise Scail2Error(
                f"driving must be [T, {height}, {width}, 3] with T >= 1, got {tuple(inputs.driving.shape)}"
            )
        if tuple(inputs.driving_masks.shape[1:]) != (height, width, 3):
            raise Scail2Error(
                f"driving_masks must be [T, {height}, {width}, 3], got {tuple(inputs.driving_masks.shape)}"
            )
        if inputs.driving_masks.shape[0] != frames:
            raise Scail2Error(
                f"driving_masks has {inputs.driving_masks.shape[0]} frames but the driving video has "
                f"{frames}; give one mask frame per driving frame"
            )
        for image, mask in inputs.extra_references:
            if tuple(image.shape) != (3, height, width) or tuple(mask.shape) != (3, height, width):
                raise Scail2Error(f"extra references must be [3, {height}, {width}] image and mask pairs")
        if self.image_encoder is None and image_embeds is None and self.transformer.config.model_type == "i2v":
            raise Scail2Error("this i2v transformer needs an image encoder; the model folder has none")

    def check_call_arguments(
        self,
        output_type: str,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        image_embeds: torch.Tensor | None,
    ) -> None:
        """Raise Scail2Error on a bad output type or precomputed embeddings of the wrong width."""
        if output_type not in OUTPUT_TYPES:
            raise Scail2Error(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        cfg = self.transformer.config
        if image_embeds is not None and cfg.model_type != "i2v":
            raise Scail2Error("image_embeds were given but this t2v transformer takes no CLIP tokens; leave them out")
        widths = {"prompt_embeds": cfg.text_dim, "negative_prompt_embeds": cfg.text_dim, "image_embeds": cfg.image_dim}
        values = {
            "prompt_embeds": prompt_embeds,
            "negative_prompt_embeds": negative_prompt_embeds,
            "image_embeds": image_embeds,
        }
        for name, value in values.items():
            if value is not None and (
                value.ndim not in (2, 3) or value.ndim == 3 and value.shape[0] != 1 or value.shape[-1] != widths[name]
            ):
                raise Scail2Error(
                    f"{name} must be [1, N, {widths[name]}] (one prompt or image), got {tuple(value.shape)}"
                )

    # 2. -----------------------------------------------------------------------------------------------------
    def encode_prompts(
        self,
        prompt: str,
        negative_prompt: str,
        guidance_scale: float,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text features [B, L, text_dim]: [negative, prompt] when guided (B = 2), else [prompt] (B = 1).

        Given embeddings ([1, L, text_dim] or [L, text_dim]) stand in for their prompt's umT5 features. Both rows
        are zero-padded to the same length; the transformer zero-pads to text_len anyway.
        """
        cfg = self.transformer.config
        if self.text_encoder is None and prompt_embeds is None:
            return torch.zeros(1, 1, cfg.text_dim, device=self.device)
        guided = guidance_scale > 1
        given = [negative_prompt_embeds, prompt_embeds] if guided else [prompt_embeds]
        missing = [
            text for text, embeds in zip([negative_prompt, prompt] if guided else [prompt], given) if embeds is None
        ]
        if missing and self.text_encoder is None:
            raise Scail2Error(
                "negative_prompt_embeds are needed for guidance_scale > 1: this model has no text "
                "encoder to encode the negative prompt"
            )
        encoded = iter(
            encode_prompts(self.text_encoder, self.tokenizer, missing, text_len=cfg.text_len) if missing else []
        )
        features = [next(encoded) if embeds is None else embeds.reshape(-1, cfg.text_dim) for embeds in given]
        longest = max(f.shape[0] for f in features)
        padded = [torch.nn.functional.pad(f.float(), (0, 0, 0, longest - f.shape[0])) for f in features]
        return torch.stack(padded).to(self.device)

    # 3. -----------------------------------------------------------------------------------------------------
    def encode_reference(self, inputs: AnimationInputs, image_embeds: torch.Tensor | None = None) -> EncodedReference:
        """Reference latent, mask, CLIP tokens ([1, N, image_dim]; `image_embeds` when given, else from the
        reference) and the extra views."""
        codec = self.codec
        if image_embeds is None:
            image_embeds = self.encode_image(inputs.reference)
        else:
            image_embeds = image_embeds.reshape(1, -1, image_embeds.shape[-1]).float()
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

    def encode_image(self, reference: torch.Tensor) -> torch.Tensor | None:
        """CLIP tokens [1, N, image_dim] of the [3, H, W] reference; None for a t2v transformer or no encoder."""
        if self.image_encoder is None or self.transformer.config.model_type != "i2v":
            return None
        pixels = clip_pixel_values(reference, size=self.image_encoder.config.image_size)
        return clip_image_features(self.image_encoder, pixels).float()

    # 4. -----------------------------------------------------------------------------------------------------
    @staticmethod
    def plan_segments(num_frames: int, settings: SamplingSettings) -> list[Segment]:
        return plan_segments(num_frames, settings.segment_length, settings.overlap)

    def prepare_latents(
        self,
        inputs: AnimationInputs,
        segments: list[Segment],
        generator: torch.Generator,
        latents: torch.Tensor | list[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """Initial noise of every segment, [1, z, T_lat, h, w] fp32 each (T_lat of the segment's length).

        Drawn from `generator` (on its device) segment after segment, or `latents` checked and used: a list with
        one tensor per segment, or a single tensor when the video is one segment.
        """
        height, width = inputs.reference.shape[1:]
        shapes = [(1, self.codec.mean.shape[1], *self.codec.latent_shape(s.length, height, width)) for s in segments]
        if latents is None:
            return [torch.randn(shape, generator=generator, device=generator.device) for shape in shapes]
        latents = [latents] if torch.is_tensor(latents) else list(latents)
        if len(latents) != len(segments):
            raise Scail2Error(
                f"latents holds {len(latents)} tensor(s) but the video runs as {len(segments)} "
                f"segment(s); pass a list with one [1, z, T_lat, h, w] tensor per segment"
            )
        for index, (latent, shape) in enumerate(zip(latents, shapes)):
            if tuple(latent.shape) != shape:
                raise Scail2Error(f"latents[{index}] has shape {tuple(latent.shape)} but segment {index} needs {shape}")
        return [latent.float() for latent in latents]

    # 5. -----------------------------------------------------------------------------------------------------
    def prepare_segment(self, inputs: AnimationInputs, segment: Segment) -> SegmentConditions:
        """Driving frames and masks of one segment (padded to its length) -> half-resolution conditions."""
        window = slice(segment.start, segment.start + segment.real_frames)
        pose_latents = encode_driving(self.codec, pad_frames(inputs.driving[window], segment.length))
        driving_masks = compress_driving_masks(pad_frames(inputs.driving_masks[window], segment.length))
        return SegmentConditions(pose_latents=pose_latents, driving_masks=driving_masks.to(pose_latents.device))

    # 6. -----------------------------------------------------------------------------------------------------
    def build_velocity_fn(
        self,
        reference: EncodedReference,
        conditions: SegmentConditions,
        text: torch.Tensor,
        replace: bool,
        history_frames: int = 0,
        autocast_dtype: torch.dtype | None = None,
    ):
        """This pipeline's transformer over one segment's conditions; see `transformer_velocity`."""
        return transformer_velocity(
            self.transformer, self.device, reference, conditions, text, replace, history_frames, autocast_dtype
        )

    def denoise_segment(
        self,
        reference: EncodedReference,
        conditions: SegmentConditions,
        text: torch.Tensor,
        noise: torch.Tensor,
        history: torch.Tensor | None,
        settings: SamplingSettings,
        replace: bool,
        autocast_dtype: torch.dtype | None = None,
        progress=None,
        callback=None,
    ) -> torch.Tensor:
        """Run the sampler on one segment from `noise` [1, z, T_lat, h, w]. `history` [1, z, t_h, h, w] is
        re-imposed before and after every step; guidance applies when `text` holds [negative, prompt].
        `callback(step_index, timestep, latent) -> latent or None` runs after every step (see `samplers.sample`)."""
        history_frames = 0 if history is None else history.shape[2]
        velocity = self.build_velocity_fn(reference, conditions, text, replace, history_frames, autocast_dtype)

        def on_step_end(index: int, timestep: torch.Tensor, latent: torch.Tensor) -> torch.Tensor | None:
            if progress is not None:
                progress.update(1)
            return None if callback is None else callback(index, timestep, latent)

        sampler = FlowSampler(settings.sampler, settings.steps, settings.shift)
        reset_step_cache(self.transformer)  # a step cache starts each segment afresh
        return sample(
            velocity,
            noise.to(self.device),
            sampler,
            guidance_scale=settings.guidance_scale if text.shape[0] == 2 else None,
            clean_prefix=None if history is None else history.to(self.device),
            callback=on_step_end,
        )

    def step_end_callback(self, callback_on_step_end, tensor_inputs: list[str] | None = None):
        """Adapt a diffusers-style `callback_on_step_end(pipe, step_index, timestep, callback_kwargs) -> dict` to
        `denoise_segment`'s callback (None without one); a "latents" entry in the returned dict replaces them."""
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            tensor_inputs = callback_on_step_end.tensor_inputs
        tensor_inputs = ["latents"] if tensor_inputs is None else list(tensor_inputs)
        unknown = [name for name in tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise Scail2Error(
                f"callback_on_step_end_tensor_inputs {unknown} cannot be handed to a callback; "
                f"choose from {self._callback_tensor_inputs}"
            )
        if callback_on_step_end is None:
            return None

        def on_step_end(step_index: int, timestep: torch.Tensor, latent: torch.Tensor) -> torch.Tensor | None:
            callback_kwargs = {"latents": latent} if "latents" in tensor_inputs else {}
            outputs = callback_on_step_end(self, step_index, timestep, callback_kwargs) or {}
            return outputs.get("latents")

        return on_step_end

    # 7. -----------------------------------------------------------------------------------------------------
    def decode_segment(self, latent: torch.Tensor) -> torch.Tensor:
        """[1, z, T_lat, h, w] -> [3, T, H, W] in [-1, 1]; a NaN anywhere is an error, not a black video."""
        video = self.codec.decode(latent)[0]
        if not torch.isfinite(video).all():
            raise Scail2Error(
                "the generated video contains NaN or infinite values; try --dtype fp32 or fewer "
                "LoRAs / a lower LoRA scale"
            )
        return video

    # 8. -----------------------------------------------------------------------------------------------------
    @staticmethod
    def stitch(decoded: list[torch.Tensor], segments: list[Segment]) -> torch.Tensor:
        """Concatenate each segment's new frames (history and padding dropped) -> [T, H, W, 3] uint8."""
        return model_video_to_frames(SCAIL2Pipeline.stitch_video(decoded, segments))

    @staticmethod
    def stitch_video(decoded: list[torch.Tensor], segments: list[Segment]) -> torch.Tensor:
        """As `stitch`, in floats: [3, T, H, W] in [-1, 1]."""
        parts = [video[:, seg.history_frames : seg.real_frames] for video, seg in zip(decoded, segments)]
        return torch.cat(parts, dim=1)

    @staticmethod
    def postprocess(video: torch.Tensor, output_type: str = "uint8") -> torch.Tensor | np.ndarray:
        """[3, T, H, W] in [-1, 1] -> "uint8": [T, H, W, 3] uint8 tensor; "pt": [T, 3, H, W] float32 tensor in
        [0, 1]; "np": [T, H, W, 3] float32 array in [0, 1] (diffusers' video layouts without the batch axis)."""
        if output_type == "uint8":
            return model_video_to_frames(video)
        frames = ((video.clamp(-1, 1) + 1) / 2).permute(1, 0, 2, 3).contiguous()  # [T, 3, H, W]
        return frames if output_type == "pt" else frames.permute(0, 2, 3, 1).cpu().numpy()

    def history_latent(self, previous: torch.Tensor, segment: Segment) -> torch.Tensor | None:
        """The last `overlap` decoded frames of the previous segment, re-encoded: [1, z, t_h, h, w]."""
        if not segment.history_frames:
            return None
        return self.codec.encode(previous[None, :, -segment.history_frames :])

    @torch.no_grad()
    def __call__(
        self,
        inputs: AnimationInputs,
        settings: SamplingSettings = SamplingSettings(),
        seed: int = 0,
        autocast_dtype: torch.dtype | None = None,
        progress: bool = True,
        *,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | list[torch.Tensor] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        output_type: str = "uint8",
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> AnimationResult:
        r"""Animate `inputs.reference` with the motion of `inputs.driving`.

        Args:
            inputs: the tensors of one generation (`AnimationInputs`), already at the target size.
            settings: sampler, steps, shift, guidance scale and segmenting (`SamplingSettings`).
            seed: seeds a CPU generator for the initial noise when `generator` is None.
            autocast_dtype: run the transformer under autocast to this dtype (None: no autocast).
            progress: show a progress bar over all segments' steps.
            generator: the `torch.Generator` the initial noise is drawn from (on its device), segment by segment.
            latents: the initial noise instead of drawing it: a list with one [1, z, T_lat, h, w] tensor per
                segment (T_lat = (length - 1) / 4 + 1 of that segment, h, w = H / 8, W / 8), or one tensor when
                the video is a single segment. A later segment's leading frames are overwritten by its history.
            prompt_embeds, negative_prompt_embeds: umT5 features [1, L, text_dim] that replace encoding
                `inputs.prompt` / `inputs.negative_prompt` (the negative one is only used when guided).
            image_embeds: CLIP tokens [1, N, image_dim] of the reference that replace the image encoder.
            output_type: what `frames` of the result holds:
                "uint8" (default): [T, H, W, 3] uint8 tensor;
                "pt": [T, 3, H, W] float32 tensor in [0, 1];
                "np": [T, H, W, 3] float32 numpy array in [0, 1];
                "latent": a list with each segment's final latent [1, z, T_lat, h, w] (history frames included,
                    the last segment not decoded); `stitch_video` over `decode_segment` of each gives the video.
            callback_on_step_end: `callback(pipe, step_index, timestep, callback_kwargs) -> dict`, called after
                every step of every segment (`step_index` restarts at 0 in each segment); a "latents" entry in
                the returned dict replaces the latent (clean history is re-imposed on it).
            callback_on_step_end_tensor_inputs: the tensors put in `callback_kwargs` (default ["latents"]).

        Returns:
            `AnimationResult` with `frames` (see `output_type`), the `segments` and `timings` in seconds.
        """
        timings: dict[str, float] = {}
        start = time.perf_counter()
        # 1. check inputs
        self.check_inputs(inputs, image_embeds)
        self.check_call_arguments(output_type, prompt_embeds, negative_prompt_embeds, image_embeds)
        step_end = self.step_end_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)
        # 2-3. encode the prompts and the reference
        text = self.encode_prompts(
            inputs.prompt, inputs.negative_prompt, settings.guidance_scale, prompt_embeds, negative_prompt_embeds
        )
        reference = self.encode_reference(inputs, image_embeds)
        # 4. plan segments and their initial noise
        segments = self.plan_segments(inputs.driving.shape[0], settings)
        noise = self.prepare_latents(inputs, segments, generator or torch.Generator().manual_seed(seed), latents)
        timings["encode_s"] = time.perf_counter() - start
        # 5-7. condition, denoise and decode segment after segment (each needs the previous one's decoded frames)
        final_latents: list[torch.Tensor] = []
        decoded: list[torch.Tensor] = []
        # a context manager, so an error message is never interleaved with a half-drawn bar
        with tqdm(total=len(segments) * settings.steps, disable=not progress, unit="step", desc="denoise") as bar:
            for segment, segment_noise in zip(segments, noise):
                bar.set_description(f"segment {segment.index + 1}/{len(segments)}")
                conditions = self.prepare_segment(inputs, segment)
                history = self.history_latent(decoded[-1], segment) if decoded else None
                tic = time.perf_counter()
                final_latents.append(
                    self.denoise_segment(
                        reference,
                        conditions,
                        text,
                        segment_noise,
                        history,
                        settings,
                        replace=inputs.mode == "replace",
                        autocast_dtype=autocast_dtype,
                        progress=bar,
                        callback=step_end,
                    )
                )
                timings[f"segment_{segment.index}_denoise_s"] = time.perf_counter() - tic
                if output_type != "latent" or segment is not segments[-1]:
                    decoded.append(self.decode_segment(final_latents[-1]))
        # 8. stitch and format
        if output_type == "latent":
            frames = final_latents
        else:
            frames = self.postprocess(self.stitch_video(decoded, segments), output_type)
        timings["total_s"] = time.perf_counter() - start
        return AnimationResult(frames=frames, segments=segments, timings=timings)
