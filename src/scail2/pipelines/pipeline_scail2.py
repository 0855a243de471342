"""SCAIL2Pipeline: a reference character performs the motion of a driving video.

In-memory inputs (already at the target size) go through short numbered steps, each a public method:

    1. check_inputs            shapes, lengths and mode
    2. encode_prompts          umT5 features for the prompt and, under guidance, the negative prompt
    3. encode_reference        reference latent, its 28-channel mask, CLIP tokens, extra reference views
    4. plan_segments           81-frame segments overlapping by 5 (scail2.pipelines.segments);
       prepare_latents         each segment's initial noise, drawn from the generator or checked when given
    5. prepare_segment         driving latents and driving masks of one segment (half resolution, or the
                               video's for a transformer with driving_scale 1; latents of the frames, or
                               of their pose cue for one with driving_signal "pose_cue")
    6. denoise_segment         `scail2.diffusion.samplers.sample` over `build_velocity_fn`'s transformer closure,
                               clean history re-imposed before and after every step
    7. decode_segment          latents -> pixels, then to the CPU in the output format (uint8 by default);
       finish_segment          with what the next segment starts from, by the hand-off (scail2.pipelines.drift)
    8. stitch_video, postprocess  drop each later segment's history frames, trim the padding; the output format

Every tensor is made on the execution device (`_execution_device`, as in diffusers), so diffusers' model,
sequential and group offloading work; `enable_memory_settings` applies a `MemorySettings` (scail2.pipelines.memory).
The encoders run once per call and then leave the accelerator; a segment's decoded frames go to the CPU at once,
so only the few frames the next segment re-encodes as history stay on the accelerator between segments.

File reading, resizing and writing live in `scail2.animate`; this class only sees tensors.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from tqdm.auto import tqdm

from scail2.conditioning import (
    TEMPORAL_STRIDE,
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
from scail2.pipelines.drift import DriftSettings, anchor_colors, character_pixels, latent_history, masked_mean_color
from scail2.pipelines.memory import (
    MemorySettings,
    available_accelerator_bytes,
    choose_cfg_mode,
    detach_accelerate_hooks,
    has_accelerate_hooks,
    pass_activation_bytes,
    tiled_decoding,
)
from scail2.pipelines.segment_hooks import SegmentHooks, SegmentState
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
        if self.segment_length < 1 or (self.segment_length - 1) % TEMPORAL_STRIDE:
            raise Scail2Error(f"--segment-length must be 4n+1 (e.g. 81), got {self.segment_length}")
        if self.overlap < 1 or (self.overlap - 1) % TEMPORAL_STRIDE:
            raise Scail2Error(f"--overlap must be 4n+1 (e.g. 5), got {self.overlap}")


# Named sampler presets (docs/architecture.md, "Sampler grids"): upstream's defaults; the fast DPM++ preset of the
# MLX port; and the preset of the step- and guidance-distilled LoRAs for Wan2.1-I2V-14B (applied with --lora),
# which were trained on exactly the timesteps of 4 Euler steps at shift 5 (1000, 937.5, 833.3, 625) and
# without the unconditional pass.
SAMPLING_PRESETS: dict[str, SamplingSettings] = {
    "quality": SamplingSettings(sampler="unipc", steps=40, shift=5.0, guidance_scale=5.0),
    "fast": SamplingSettings(sampler="dpm++", steps=16, shift=5.0, guidance_scale=5.0),
    "distill": SamplingSettings(sampler="euler", steps=4, shift=5.0, guidance_scale=1.0),
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
    cfg_mode: str = "batched",
):
    """The transformer over one segment's conditions as `velocity(latent, timestep)` for `samplers.sample`.

    `text` is [1, L, D], or [2, L, D] = [negative, prompt] for guidance: the velocity then comes back
    [2, z, T, h, w], from one forward on a batch of two (`cfg_mode` "batched") or from one forward per text row,
    one after the other ("sequential": half the activations, the same numbers). The first `history_frames` latent
    frames are flagged to the model as clean history.
    """
    if cfg_mode not in ("batched", "sequential"):
        raise ValueError(f"cfg_mode must be 'batched' or 'sequential' here, got {cfg_mode!r}")
    frames, (height, width) = conditions.pose_latents.shape[2], reference.latent.shape[-2:]
    on_device = lambda t: None if t is None else t.to(device)  # noqa: E731
    zeros = reference.mask.new_zeros(1, reference.mask.shape[1], frames, height, width)
    shared = dict(  # batch 1 each, expanded to a pass's batch as views
        ref_latents=on_device(reference.latent),
        ref_masks=on_device(torch.cat([reference.mask, zeros], 2)),
        pose_latents=on_device(conditions.pose_latents),
        driving_masks=on_device(conditions.driving_masks),
        image_embeds=on_device(reference.image_embeds),
        extra_ref_latents=on_device(reference.extra_latents),
        extra_ref_masks=on_device(reference.extra_masks),
    )
    if history_frames:
        shared["history_mask"] = history_mask(frames, history_frames, height, width, device=device)[None]
    return guided_velocity(transformer, device, shared, text, autocast_dtype, cfg_mode, replace=replace)


def guided_velocity(
    transformer,
    device: torch.device,
    shared: dict,
    text: torch.Tensor,
    autocast_dtype: torch.dtype | None = None,
    cfg_mode: str = "batched",
    **fixed,
):
    """`velocity(latent, timestep)` of `transformer` called with the batch-1 tensors `shared` (expanded to each
    pass's batch) and the keywords `fixed`, one pass per text row or all rows at once (`transformer_velocity`)."""
    passes = [text.to(device)] if cfg_mode == "batched" else list(text.to(device).split(1))
    pass_names = (
        ["guided" if text.shape[0] == 2 else "cond"] if cfg_mode == "batched" else ["uncond", "cond"][-len(passes) :]
    )

    def forward(latent: torch.Tensor, timestep: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        batch = rows.shape[0]
        expand = lambda t: None if t is None else t.expand(batch, *t.shape[1:])  # noqa: E731
        kwargs = {name: expand(value) for name, value in shared.items()}
        return transformer(
            expand(latent), timestep.to(device).expand(batch), encoder_hidden_states=rows, **fixed, **kwargs
        ).sample.float()

    def velocity(latent: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            outputs = []
            for name, rows in zip(pass_names, passes):
                with cache_pass(transformer, name):  # a step cache keeps its state per guidance pass
                    outputs.append(forward(latent, timestep, rows))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    return velocity


class SCAIL2Pipeline(DiffusionPipeline):
    r"""Skeleton-free character animation with the SCAIL-2 transformer.

    Components: `transformer` (SCAIL2Transformer3DModel), `vae` (AutoencoderKLWan), and optionally
    `text_encoder` + `tokenizer` (UMT5EncoderModel) and `image_encoder` (CLIPVisionModel). Without a text
    encoder the prompt is ignored (small models trained without text); without an image encoder the
    transformer must be a "t2v" model (no CLIP tokens).
    """

    # Model offload moves a component onto the accelerator when it runs and the one before it in this chain off.
    # The encoders run first, once; then each segment runs the transformer, then the VAE decode, which takes the
    # transformer off for the decode. The VAE's small encodes before the first transformer pass leave it on the
    # accelerator during denoising, where it costs its weights only.
    model_cpu_offload_seq = "text_encoder->image_encoder->transformer->vae"
    _optional_components = ["text_encoder", "tokenizer", "image_encoder"]
    _callback_tensor_inputs = ["latents"]
    _encoder_names = ("text_encoder", "image_encoder")
    # Several processes for one video (`scail2.parallel.ParallelLayout.apply`); None: this process alone.
    parallel = None

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
        self.memory = MemorySettings()

    @property
    def codec(self) -> VideoLatentCodec:
        return VideoLatentCodec(self.vae, device=self._execution_device)

    # Memory ----------------------------------------------------------------------------------------------------
    def enable_memory_settings(
        self, memory: MemorySettings, device: torch.device | str | None = None
    ) -> SCAIL2Pipeline:
        """Place the components for `memory.offload` with `device` as the accelerator (default: cuda when there
        is one, else cpu) and keep `memory` for the guidance mode and VAE tiling of later calls.

        Apply it to a pipeline loaded on the CPU. Once an offload mode is applied, only the guidance mode and the
        tiling can change on that pipeline (load it again to change the placement).
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        placement = (self.memory.offload, self.memory.encoders_on_cpu)
        if self.memory.offload != "none" and placement == (memory.offload, memory.encoders_on_cpu):
            self.memory = memory  # placed already: the guidance mode and tiling are read per call
            return self
        if self.memory.offload != "none":
            raise Scail2Error(
                f"--offload {self.memory.offload} is already applied to this pipeline; load the pipeline again "
                f"to apply --offload {memory.offload}"
            )
        self.memory = memory
        if memory.offload == "model":
            self.enable_model_cpu_offload(device=device)
        elif memory.offload == "sequential":
            self._enable_layer_offload(device)
        else:
            if memory.offload == "group":
                self._enable_block_offload(device)
            else:
                self.transformer.to(device)
            self.vae.to(device)
            for encoder in self._encoders():
                encoder.to("cpu")  # each call brings them onto the accelerator for its encoding only
        return self

    def _enable_block_offload(self, device: torch.device) -> None:
        """diffusers' block-level group offloading of the transformer: one block on the accelerator at a time, the
        next one prefetched on a CUDA stream (no stream on a CPU)."""
        streamed = device.type == "cuda"
        self.transformer.enable_group_offload(
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            non_blocking=streamed,
            use_stream=streamed,
        )

    def _enable_layer_offload(self, device: torch.device) -> None:
        """accelerate's sequential offload of each component (the encoders only when they run on the accelerator):
        weights on the meta device, each layer's copied in from the CPU when it runs. This is what diffusers'
        `enable_sequential_cpu_offload` does, except that it names the device by index, and a CPU named "cpu:0"
        copies every weight on each move and drops its Parameter type."""
        from accelerate import cpu_offload

        self.to("cpu")
        encoders = [] if self.memory.encoders_on_cpu else self._encoders()
        for module in (self.transformer, self.vae, *encoders):
            cpu_offload(module, device, offload_buffers=len(module._parameters) > 0)

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str | None = None):
        """diffusers' model offload, without hooks on the encoders when `memory.encoders_on_cpu` keeps them on the
        CPU (also when `maybe_free_model_hooks` applies it again after a call)."""
        super().enable_model_cpu_offload(gpu_id=gpu_id, device=device)
        self._unhook_cpu_encoders()

    def _unhook_cpu_encoders(self) -> None:
        # the execution device is still read from the transformer's hook: it is registered first
        if self.memory.encoders_on_cpu:
            for encoder in self._encoders():
                detach_accelerate_hooks(encoder)

    def _encoders(self) -> list[torch.nn.Module]:
        return [module for name in self._encoder_names if (module := getattr(self, name, None)) is not None]

    @contextmanager
    def placed_encoder(self, encoder: torch.nn.Module):
        """Yields the device `encoder` runs on for one encoding: the CPU under `memory.encoders_on_cpu`, else the
        execution device; afterwards it leaves the accelerator. Offload hooks, where present, place it instead."""
        if has_accelerate_hooks(encoder) or self._maybe_raise_error_if_group_offload_active(module=encoder):
            yield self._execution_device
            return
        device = torch.device("cpu") if self.memory.encoders_on_cpu else self._execution_device
        encoder.to(device)
        try:
            yield device
        finally:
            encoder.to("cpu")

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
        cfg, device = self.transformer.config, self._execution_device
        if self.text_encoder is None and prompt_embeds is None:
            if negative_prompt_embeds is not None:
                raise Scail2Error(
                    "negative_prompt_embeds were given without prompt_embeds, and this model has no text encoder "
                    "to encode the prompt; pass prompt_embeds too"
                )
            return torch.zeros(1, 1, cfg.text_dim, device=device)
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
        encoded = iter(self._encode_texts(missing) if missing else [])
        features = [next(encoded) if embeds is None else embeds.reshape(-1, cfg.text_dim) for embeds in given]
        longest = max(f.shape[0] for f in features)
        padded = [torch.nn.functional.pad(f.to(device).float(), (0, 0, 0, longest - f.shape[0])) for f in features]
        return torch.stack(padded)

    def _encode_texts(self, texts: list[str]) -> list[torch.Tensor]:
        with self.placed_encoder(self.text_encoder) as device:
            return encode_prompts(
                self.text_encoder, self.tokenizer, texts, text_len=self.transformer.config.text_len, device=device
            )

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
        image_embeds = None if image_embeds is None else image_embeds.to(latent.device)
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
        with self.placed_encoder(self.image_encoder) as device:
            features = clip_image_features(self.image_encoder, pixels, device=device).float()
        return features.to(self._execution_device)

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
        """Driving frames and masks of one segment (padded to its length) -> conditions at the resolution the
        transformer's `driving_scale` asks for (2: half), its driving latents of the signal its `driving_signal`
        names (the frames, or their pose cue)."""
        window = slice(segment.start, segment.start + segment.real_frames)
        config = self.transformer.config
        scale, signal = config.get("driving_scale", 2), config.get("driving_signal", "frames")
        frames = pad_frames(inputs.driving[window], segment.length)
        masks = pad_frames(inputs.driving_masks[window], segment.length)
        pose_latents = encode_driving(self.codec, frames, scale, signal, masks, inputs.mode)
        driving_masks = compress_driving_masks(masks, scale)
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
        cfg_mode: str | None = None,
    ):
        """This pipeline's transformer over one segment's conditions; see `transformer_velocity`. `cfg_mode`
        (default: `memory.cfg_mode`) "auto" is resolved here for this segment's size (`choose_cfg_mode`)."""
        device = self._execution_device
        if self.parallel is not None and self.parallel.splits_guidance(text):  # one guidance pass per rank group
            own = self.parallel.own_text(text)
            return self.parallel.gather_guidance(
                transformer_velocity(
                    self.transformer, device, reference, conditions, own, replace, history_frames, autocast_dtype
                )
            )
        cfg_mode = self.guidance_mode(cfg_mode or self.memory.cfg_mode, text.shape[0], conditions, reference)
        return transformer_velocity(
            self.transformer, device, reference, conditions, text, replace, history_frames, autocast_dtype, cfg_mode
        )

    def guidance_mode(
        self, cfg_mode: str, passes: int, conditions: SegmentConditions, reference: EncodedReference
    ) -> str:
        """How one segment runs its guidance passes: `cfg_mode` itself, or for "auto" the choice of
        `choose_cfg_mode` by the accelerator's available memory and one pass's activation peak at this segment's
        token count."""
        if cfg_mode != "auto":
            return cfg_mode
        latent_shape = (conditions.pose_latents.shape[2], *reference.latent.shape[-2:])
        extra = 0 if reference.extra_latents is None else reference.extra_latents.shape[2]
        precision = "fp32" if self.transformer.dtype == torch.float32 else "bf16"
        per_pass = pass_activation_bytes(dict(self.transformer.config), latent_shape, extra, precision)
        return choose_cfg_mode(cfg_mode, passes, available_accelerator_bytes(self._execution_device), per_pass)

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
        re-imposed before and after every step; guidance applies when `text` holds [negative, prompt], its two
        passes batched or one after the other by `memory.cfg_mode`.
        `callback(step_index, timestep, latent) -> latent or None` runs after every step (see `samplers.sample`)."""
        device = self._execution_device
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
            noise.to(device),
            sampler,
            guidance_scale=settings.guidance_scale if text.shape[0] == 2 else None,
            clean_prefix=None if history is None else history.to(device),
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
        """[1, z, T_lat, h, w] -> [3, T, H, W] in [-1, 1] on the execution device, in overlapping tiles under
        `memory.vae_tiling`; a NaN anywhere is an error, not a black video."""
        with tiled_decoding(self.vae, self.memory):
            video = self.codec.decode(latent)[0]
        if not torch.isfinite(video).all():
            raise Scail2Error(
                "the generated video contains NaN or infinite values; try --dtype fp32 or fewer "
                "LoRAs / a lower LoRA scale"
            )
        return video

    def segment_output(self, video: torch.Tensor, segment: Segment, output_type: str = "uint8"):
        """A decoded segment's new frames (history and padding dropped) in the output format, on the CPU; the
        per-frame formats make concatenating these equal to `postprocess(stitch_video(...))`."""
        frames = self.postprocess(video[:, segment.history_frames : segment.real_frames], output_type)
        return frames if isinstance(frames, np.ndarray) else frames.cpu()

    def finish_segment(
        self,
        latent: torch.Tensor,
        segment: Segment,
        following: Segment | None,
        output_type: str,
        handoff: str = "pixel",
        anchor=None,
    ):
        """A denoised segment -> (its output on the CPU: frames by `segment_output`, or the latent itself for
        "latent"; what the following segment starts from, or None: the decoded frames it re-encodes as history
        under the `pixel` hand-off, the clean latent frames it takes as they are under `latent`). `anchor(video,
        segment) -> video` corrects the decoded video first (colour anchoring). The decoded video is freed on
        return; a last segment's latent is not decoded when latents are the output."""
        carry = latent_history(latent, following) if handoff == "latent" else None
        if output_type == "latent":
            output = latent.cpu()
            if following is None or handoff == "latent":
                return output, carry
        video = self.decode_segment(latent)
        if anchor is not None:
            video = anchor(video, segment)
        if output_type != "latent":
            output = self.segment_output(video, segment, output_type)
        if handoff == "hybrid":
            return output, self.hybrid_history(video, latent, following)
        return output, carry if handoff == "latent" else self.history_tail(video, following)

    def hybrid_history(self, video: torch.Tensor, latent: torch.Tensor, following: Segment | None):
        """The following segment's history under the `hybrid` hand-off: its first frame encoded alone (the VAE's
        first latent frame holds one frame), then the clean latent frames of the rest; None after the last."""
        rest = latent_history(latent, following)
        if rest is None:
            return None
        first = self.codec.encode(video[None, :, -following.history_frames :][:, :, :1])
        return torch.cat([first, rest[:, :, 1:]], dim=2)

    @staticmethod
    def history_tail(video: torch.Tensor, following: Segment | None) -> torch.Tensor | None:
        """The decoded frames the following segment re-encodes as its history, copied out of `video` so the rest
        of it can be freed; None after the last segment."""
        if following is None or not following.history_frames:
            return None
        return video[:, -following.history_frames :].clone()

    # 8. -----------------------------------------------------------------------------------------------------
    @staticmethod
    def stitch_video(decoded: list[torch.Tensor], segments: list[Segment]) -> torch.Tensor:
        """Concatenate each segment's new frames (history and padding dropped) -> [3, T, H, W]."""
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

    @staticmethod
    def join_outputs(parts: list, output_type: str):
        """Segment outputs (`finish_segment`) -> one video along time; latents stay a list, one per segment."""
        if output_type == "latent":
            return parts
        return np.concatenate(parts) if output_type == "np" else torch.cat(parts)

    def history_latent(self, previous: torch.Tensor, segment: Segment, handoff: str = "pixel") -> torch.Tensor | None:
        """The history [1, z, t_h, h, w] of `segment` from what the previous one carried over: its last `overlap`
        decoded frames re-encoded (`pixel`), or its last clean latent frames as they are (`latent`)."""
        if not segment.history_frames or previous is None:
            return None
        if handoff in ("latent", "hybrid"):
            return previous
        return self.codec.encode(previous[None, :, -segment.history_frames :])

    def color_anchor(self, inputs: AnimationInputs, bound: float):
        """`anchor(video, segment) -> video` moving each segment's character colour towards the reference's by at
        most `bound` per channel (scail2.pipelines.drift); None when `bound` is 0."""
        if bound <= 0:
            return None
        target = masked_mean_color(inputs.reference, character_pixels(inputs.reference_mask, 0))

        def anchor(video: torch.Tensor, segment: Segment) -> torch.Tensor:
            masks = pad_frames(
                inputs.driving_masks[segment.start : segment.start + segment.real_frames], segment.length
            )
            return anchor_colors(video, character_pixels(masks, -1)[: video.shape[1]], target, bound)

        return anchor

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
        drift: DriftSettings | None = None,
        segment_hooks: SegmentHooks | None = None,
        segment_conditions: list[SegmentConditions] | None = None,
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
            drift: how segments join (`DriftSettings`: `handoff` "pixel" or "latent", `color_anchor` bound).
            segment_hooks: resume finished segments, keep each one as it finishes, reject and redraw one
                (`scail2.pipelines.segment_hooks`).
            segment_conditions: each segment's `prepare_segment` result, computed before (a cache of the driving
                video's work); None computes them here.

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
        # 5-7. condition, denoise and decode segment after segment (each needs the previous one's last frames);
        # the decoded frames go to the CPU at once, only the next history's frames stay on the accelerator
        hooks = segment_hooks or SegmentHooks()
        drift = drift or DriftSettings()
        anchor = self.color_anchor(inputs, drift.color_anchor)
        outputs: list = []
        carry: torch.Tensor | None = None

        def run(segment: Segment, segment_noise: torch.Tensor, bar) -> SegmentState:
            conditions = segment_conditions[segment.index] if segment_conditions else None
            conditions = conditions or self.prepare_segment(inputs, segment)
            history = self.history_latent(carry, segment, drift.handoff)
            tic = time.perf_counter()
            latent = self.denoise_segment(
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
            timings[f"segment_{segment.index}_denoise_s"] = time.perf_counter() - tic
            following = segments[segment.index + 1] if segment.index + 1 < len(segments) else None
            return SegmentState(*self.finish_segment(latent, segment, following, output_type, drift.handoff, anchor))

        # a context manager, so an error message is never interleaved with a half-drawn bar
        with tqdm(total=len(segments) * settings.steps, disable=not progress, unit="step", desc="denoise") as bar:
            for segment, segment_noise in zip(segments, noise):
                bar.set_description(f"segment {segment.index + 1}/{len(segments)}")
                state = hooks.resume(segment)
                if state is not None:  # finished by an earlier run
                    bar.update(settings.steps)
                else:
                    state, attempts = run(segment, segment_noise, bar), 1
                    while attempts <= hooks.retries and not hooks.accept(segment, state):
                        retry_noise = hooks.retry_noise(segment_noise, seed, segment, attempts)
                        state, attempts = run(segment, retry_noise, bar), attempts + 1
                    hooks.finished(segment, state, attempts)
                outputs.append(state.output)
                carry = state.carry
        # 8. stitch (on the CPU) and take the last offloaded component off the accelerator
        frames = self.join_outputs(outputs, output_type)
        self.maybe_free_model_hooks()
        timings["total_s"] = time.perf_counter() - start
        return AnimationResult(frames=frames, segments=segments, timings=timings)
