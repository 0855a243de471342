"""DirectAnimator on the SCAIL-2/Wan backbone: driving cues injected per block (CF-DiT), no driving stream.

DirectAnimator conditions on a *Driving Cue Triplet* instead of SCAIL-2's appended half-resolution driving
stream: a pose cue (the driving foreground, low-pass filtered), a face cue (an enlarged, centred head crop) and
a location cue (soft body and face masks). The pose and face cue videos are VAE-encoded, each concatenated with
its mask and patch-embedded onto the video token grid. In every block a CueFusion (CF-DiT) step turns them into
an addition to the video tokens:

    (scale_p, shift_p, gate_p, scale_f, shift_f, gate_f) = MLP(SiLU(e_t))       one MLP per block
    modulated_c = LN(e_c) * (1 + scale_c) + shift_c                               c in {pose, face}
    enriched_c  = e_c + gate_c * modulated_c
    video tokens += enriched_p + enriched_f                                       before self-attention

The token sequence is [reference | video]: the same length as a plain image-to-video model, a fifth shorter
than SCAIL-2's. Blocks, embeddings, RoPE and head are SCAIL-2's own (`SCAIL2Transformer3DModel`), so every
SCAIL-2/Wan key loads unchanged (`from_scail2`).

Choices where the paper is silent (each can be changed by config or in one place here):
- Where the cue is added: to the residual stream of the video tokens at the block input, i.e. before norm1 and
  self-attention, so the block itself is SCAIL-2's unchanged (its chunked path and step caches work as they
  are). The addition persists in the residual stream, and each block adds its own enriched cue on top.
- Per-block MLP with a bottleneck: SiLU(e_t) -> Linear(dim, cue_modulation_dim) -> SiLU -> Linear(., 6 dim).
  A full dim -> 6 dim linear per block would add 6.3 B parameters to the 14B model; the bottleneck (256 by
  default, CogVideoX's time embedding is 512 wide) adds 9.2 M per block there. e_t is the model's time
  embedding (the output of `time_embedding`, before Wan's shared `time_projection`).
- Same cue tokens e_p, e_f in every block (one patch embedding per cue, computed once per forward).
- Mask channels: the location cue's soft mask packed 4 sub-frames per latent frame, as the VAE packs time, so
  each cue embedder sees 16 latent + 4 mask channels (= the backbone's `in_dim`).
- The reference keeps SCAIL-2's route: a prefix frame with its 28-channel palette mask, shifted one frame in
  time by RoPE (animation mode, the paper's only mode). No extra reference views.
- Zero initialisation: both cue patch embeddings (weights and biases) and the MLP's last layer start at zero,
  so e_c = 0 and scale = shift = gate = 0 and the model is exactly the backbone at step 0 (zeroing the gate
  alone would not do it: e_c is added ungated). The embeddings get gradients at once (the ungated path), the
  MLP from the next step on.
- Without a face cue (`face_cue_latents=None`) only the pose cue is added (the "w/o face cue" ablation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from diffusers.configuration_utils import register_to_config
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

# diffusers' pipeline loader looks a component's loading base class up in the component's own module
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401
from diffusers.utils import BaseOutput

from scail2.conditioning.masks import HISTORY_MASK_CHANNELS, MASK_CHANNELS
from scail2.models.transformer_scail2 import (
    SCAIL2_PRESETS,
    FP32LayerNorm,
    SCAIL2Transformer3DModel,
    SCAIL2TransformerBlock,
    feed,
)

# The SCAIL-2 weights DirectAnimator does not use (its driving stream's patch embedding).
UNUSED_SCAIL2_KEYS = ("patch_embedding_pose.weight", "patch_embedding_pose.bias")
CUES = ("pose", "face")

# ------------------------------------------------------------------------------------------------------------
# 1. CF-DiT block
# ------------------------------------------------------------------------------------------------------------


def cue_fusion(
    cue: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, gate: torch.Tensor, norm: nn.Module
) -> torch.Tensor:
    """enriched = e + gate * (LN(e) * (1 + scale) + shift), in fp32: cue [B, N, dim], the rest [B, 1, dim]."""
    cue = cue.float()
    return cue + gate * (norm(cue) * (1 + scale) + shift)


class CueFusionBlock(SCAIL2TransformerBlock):
    """A SCAIL-2 block that first adds the CF-DiT-enriched pose and face cues to the video tokens."""

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        qk_norm: bool,
        cross_attn_norm: bool,
        eps: float,
        image_tokens: bool,
        cue_modulation_dim: int,
    ):
        super().__init__(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps, image_tokens)
        self.cue_norm = FP32LayerNorm(dim, eps, elementwise_affine=False)
        # the MLP on SiLU(e_t); its output is (scale, shift, gate) of the pose cue, then of the face cue
        self.cue_modulation = nn.Sequential(
            nn.Linear(dim, cue_modulation_dim), nn.SiLU(), nn.Linear(cue_modulation_dim, 2 * 3 * dim)
        )
        nn.init.zeros_(self.cue_modulation[2].weight)
        nn.init.zeros_(self.cue_modulation[2].bias)

    def cue_addition(self, cue_time: torch.Tensor, cues: dict[str, torch.Tensor | None]) -> torch.Tensor | None:
        """Sum of the enriched cues [B, N, dim] fp32; `cue_time` = SiLU(e_t) [B, dim] fp32. None without cues."""
        with torch.autocast(device_type=cue_time.device.type, enabled=False):
            params = self.cue_modulation(cue_time.float()).unflatten(
                1, (2, 3, -1)
            )  # [B, cue, (scale, shift, gate), dim]
            total = None
            for index, name in enumerate(CUES):
                if cues.get(name) is None:
                    continue
                scale, shift, gate = params[:, index, :, None].unbind(1)  # each [B, 1, dim]
                enriched = cue_fusion(cues[name], scale, shift, gate, self.cue_norm)
                total = enriched if total is None else total + enriched
        return total

    def forward(
        self,
        hidden_states: torch.Tensor,
        time_modulation: torch.Tensor,
        context: torch.Tensor,
        rope: torch.Tensor,
        num_image_tokens: int,
        cue_time: torch.Tensor | None = None,
        pose_tokens: torch.Tensor | None = None,
        face_tokens: torch.Tensor | None = None,
        video_start: int = 0,
    ) -> torch.Tensor:
        if cue_time is not None:
            hidden_states = self.add_cues(hidden_states, cue_time, pose_tokens, face_tokens, video_start)
        return super().forward(hidden_states, time_modulation, context, rope, num_image_tokens)

    def add_cues(self, hidden_states, cue_time, pose_tokens, face_tokens, video_start: int) -> torch.Tensor:
        """The stream with the enriched cues added to its video tokens (a new tensor; the addition and the video
        slice are freed on return, before the block's attention runs)."""
        addition = self.cue_addition(cue_time, {"pose": pose_tokens, "face": face_tokens})
        if addition is None:
            return hidden_states
        end = video_start + addition.shape[1]
        video = hidden_states[:, video_start:end] + addition.to(hidden_states.dtype)
        return torch.cat([hidden_states[:, :video_start], video, hidden_states[:, end:]], dim=1)


TransformerBlockRegistry.register(CueFusionBlock, TransformerBlockMetadata(return_hidden_states_index=0))


def is_directanimator_config(config) -> bool:
    """Whether a transformer config (a saved config.json or a live model's config) is DirectAnimator's: its
    sequence is [reference | video] and the cue streams ride beside it."""
    return config.get("_class_name") == "DirectAnimatorTransformer3DModel" or "cue_modulation_dim" in config


# ------------------------------------------------------------------------------------------------------------
# 2. Model
# ------------------------------------------------------------------------------------------------------------


@dataclass
class DirectAnimatorOutput(BaseOutput):
    """`sample`: the predicted flow velocity [B, out_dim, T, H, W] fp32; `block_hidden_states`: the video tokens
    [B, T*h*w, dim] at the output of block `capture_block` (when asked for)."""

    sample: torch.Tensor | None = None
    block_hidden_states: torch.Tensor | None = None


class DirectAnimatorTransformer3DModel(SCAIL2Transformer3DModel):
    r"""DirectAnimator's denoiser on the SCAIL-2 backbone (see the module docstring for the equations and choices).

    Config: SCAIL-2's fields, plus `cue_modulation_dim` (the hidden width of each block's CF-DiT MLP). The cue
    patch embeddings take `in_dim` channels (latent channels + 4 packed mask channels).
    """

    _no_split_modules = ["CueFusionBlock"]
    _repeated_blocks = ["CueFusionBlock"]
    _keep_in_fp32_modules = [*SCAIL2Transformer3DModel._keep_in_fp32_modules, "cue_modulation"]
    ignore_for_config = ["driving_scale", "driving_injection", "driving_signal"]  # no driving stream

    @register_to_config
    def __init__(
        self,
        model_type: str = "i2v",
        patch_size: tuple[int, int, int] = (1, 2, 2),
        text_len: int = 512,
        in_dim: int = 20,
        mask_dim: int = MASK_CHANNELS,
        dim: int = 5120,
        ffn_dim: int = 13824,
        freq_dim: int = 256,
        text_dim: int = 4096,
        out_dim: int = 16,
        num_heads: int = 40,
        num_layers: int = 40,
        qk_norm: bool = True,
        cross_attn_norm: bool = True,
        eps: float = 1e-6,
        image_dim: int = 1280,
        rope_theta: float = 10000.0,
        rope_offset: int = 120,
        cue_modulation_dim: int = 256,
    ):
        # every argument but the cue width is the backbone's
        backbone = {k: v for k, v in locals().items() if k not in ("self", "__class__", "cue_modulation_dim")}
        super().__init__(**backbone)
        patch_size = tuple(patch_size)
        del self.patch_embedding_pose  # no driving stream
        # 1. Cue patch embeddings (cue latent + packed soft mask), zero so the model starts as the backbone.
        self.cue_embedding_pose = nn.Conv3d(in_dim, dim, kernel_size=patch_size, stride=patch_size)
        self.cue_embedding_face = nn.Conv3d(in_dim, dim, kernel_size=patch_size, stride=patch_size)
        self.zero_cue_modules()
        # 3. Blocks with the CF-DiT step, replacing the plain ones the backbone built (build large models on the
        # meta device or through from_pretrained, which never hold both sets of weights).
        self.blocks = nn.ModuleList(
            CueFusionBlock(
                dim,
                ffn_dim,
                num_heads,
                qk_norm,
                cross_attn_norm,
                eps,
                model_type == "i2v",
                cue_modulation_dim,
            )
            for _ in range(num_layers)
        )

    def zero_cue_modules(self) -> None:
        """Zero the cue embeddings and every block's last MLP layer: the model then computes the backbone."""
        for conv in (self.cue_embedding_pose, self.cue_embedding_face):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        for block in getattr(self, "blocks", []):
            if isinstance(block, CueFusionBlock):
                nn.init.zeros_(block.cue_modulation[2].weight)
                nn.init.zeros_(block.cue_modulation[2].bias)

    def init_weights(self) -> None:
        """The backbone's from-scratch initialisation, then the cue modules zeroed as at construction."""
        super().init_weights()
        self.zero_cue_modules()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> DirectAnimatorTransformer3DModel:
        """A named backbone size (`14b`, `1.3b`, `demo`, `tiny`) with the cue modules, random backbone weights."""
        if name not in SCAIL2_PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(SCAIL2_PRESETS)}")
        return cls(**{**SCAIL2_PRESETS[name], **overrides})

    @classmethod
    def from_scail2(cls, backbone: SCAIL2Transformer3DModel, **overrides) -> DirectAnimatorTransformer3DModel:
        """Initialise from a SCAIL-2 (or Wan-keyed) transformer: every backbone key loads except the driving
        stream's `patch_embedding_pose`; the cue modules start at zero, so the output equals the backbone's on
        the same reference, video and history (without its driving stream)."""
        config = {k: v for k, v in backbone.config.items() if k not in cls.ignore_for_config}
        model = cls(**{**config, **overrides})
        state = {k: v for k, v in backbone.state_dict().items() if k not in UNUSED_SCAIL2_KEYS}
        missing, unexpected = model.load_state_dict(state, strict=False)
        new = [k for k in missing if not (k.startswith("cue_embedding_") or ".cue_modulation." in k)]
        if new or unexpected:
            raise ValueError(f"backbone keys do not match: missing {new}, unexpected {unexpected}")
        return model.to(backbone.dtype)

    @property
    def latent_channels(self) -> int:
        return self.config.in_dim - HISTORY_MASK_CHANNELS

    # -------------------------------------------------------------------------------------------------------
    # Input checks
    # -------------------------------------------------------------------------------------------------------

    def check_cue_inputs(self, hidden_states, timestep, ref_latents, ref_masks, cues, history_mask) -> None:
        """Raise a ValueError naming the tensor, the shape it got and the shape it needs."""
        if hidden_states.ndim != 5:
            raise ValueError(f"hidden_states must be [B, C, T, H, W], got shape {tuple(hidden_states.shape)}")
        b, _, t, h, w = hidden_states.shape
        _, p_h, p_w = self.config.patch_size
        if h % p_h or w % p_w:
            raise ValueError(f"hidden_states has latent size H={h}, W={w}; both must be multiples of {p_h}, {p_w}")
        c = self.latent_channels
        expected = {
            "hidden_states": ((b, c, t, h, w), hidden_states),
            "timestep": ((b,), timestep),
            "ref_latents": ((b, c, 1, h, w), ref_latents),
            "ref_masks": ((b, self.config.mask_dim, 1 + t, h, w), ref_masks),
        }
        if history_mask is not None:
            expected["history_mask"] = ((b, HISTORY_MASK_CHANNELS, t, h, w), history_mask)
        for name, (latents, masks) in cues.items():
            if (latents is None) != (masks is None):
                raise ValueError(f"{name}_cue_latents and {name}_masks must be given together")
            if latents is not None:
                expected[f"{name}_cue_latents"] = ((b, c, t, h, w), latents)
                expected[f"{name}_masks"] = ((b, HISTORY_MASK_CHANNELS, t, h, w), masks)
        for name, (need, tensor) in expected.items():
            if tuple(tensor.shape) != need:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)} but needs {need}")

    # -------------------------------------------------------------------------------------------------------
    # Forward pieces
    # -------------------------------------------------------------------------------------------------------

    def embed_main(self, hidden_states, ref_latents, ref_masks, history_mask) -> torch.Tensor:
        """[reference | video] tokens [B, (1+T)*h*w, dim], as the backbone's main stream."""
        b, _, t, h, w = hidden_states.shape
        if history_mask is None:
            history_mask = hidden_states.new_zeros(b, HISTORY_MASK_CHANNELS, t, h, w)
        video = torch.cat([hidden_states, history_mask.to(hidden_states.dtype)], dim=1)  # [B, in_dim, T, H, W]
        ones = ref_latents.new_ones(b, HISTORY_MASK_CHANNELS, 1, h, w)
        reference = torch.cat([ref_latents, ones], dim=1)  # [B, in_dim, 1, H, W]
        main = feed(self.patch_embedding, torch.cat([reference, video], dim=2))
        main = main + feed(self.patch_embedding_mask, ref_masks)  # [B, dim, 1+T, h', w']
        return main.flatten(2).transpose(1, 2)

    def embed_cues(self, cues: dict) -> dict[str, torch.Tensor | None]:
        """Each cue latent [B, C, T, H, W] with its packed mask [B, 4, T, H, W] -> tokens [B, T*h*w, dim]."""
        tokens = {}
        for name, (latents, masks) in cues.items():
            if latents is None:
                tokens[name] = None
                continue
            layer = getattr(self, f"cue_embedding_{name}")
            embedded = feed(layer, torch.cat([latents, masks.to(latents.dtype)], dim=1))  # [B, dim, T, h', w']
            tokens[name] = embedded.flatten(2).transpose(1, 2)
        return tokens

    def prepare(
        self,
        hidden_states,
        timestep,
        encoder_hidden_states,
        ref_latents,
        ref_masks,
        pose_cue_latents,
        pose_masks,
        face_cue_latents,
        face_masks,
        image_embeds,
        history_mask,
    ) -> dict:
        """Everything the blocks need: tokens, rotations, time modulation, context and cue arguments."""
        cues = {"pose": (pose_cue_latents, pose_masks), "face": (face_cue_latents, face_masks)}
        self.check_cue_inputs(hidden_states, timestep, ref_latents, ref_masks, cues, history_mask)
        self._check_context(hidden_states.shape[0], encoder_hidden_states, image_embeds)
        _, _, frames, height, width = hidden_states.shape
        _, p_h, p_w = self.config.patch_size
        grid = (frames, height // p_h, width // p_w)
        x = self.embed_main(hidden_states, ref_latents, ref_masks, history_mask)
        # the backbone's animation table starts [reference | video]; the driving rows after them are not used
        rope = self.rope_table(*grid, 0, False, x.device)[: x.shape[1]]
        time_embedding, time_modulation = self.embed_time(timestep)
        cue_tokens = self.embed_cues(cues)
        block_args = dict(
            time_modulation=time_modulation,
            context=self.embed_context(encoder_hidden_states, image_embeds),
            rope=rope,
            num_image_tokens=0 if image_embeds is None else image_embeds.shape[1],
            cue_time=nn.functional.silu(time_embedding),
            pose_tokens=cue_tokens["pose"],
            face_tokens=cue_tokens["face"],
            video_start=grid[1] * grid[2],
        )
        return dict(x=x, grid=grid, time_embedding=time_embedding, block_args=block_args)

    def run_blocks(self, x: torch.Tensor, block_args: dict, blocks: int | None = None, capture: int | None = None):
        """The first `blocks` blocks (all by default) -> (stream, stream after block `capture` (1-based) or None)."""
        captured = None
        for index, block in enumerate(self.blocks[:blocks]):
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                args = list(block_args.values())
                x = self._gradient_checkpointing_func(block, x, *args)
            else:
                x = block(x, **block_args)
            if capture == index + 1:
                captured = x
        return x, captured

    # -------------------------------------------------------------------------------------------------------
    # Forward
    # -------------------------------------------------------------------------------------------------------

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        ref_latents: torch.Tensor,
        ref_masks: torch.Tensor,
        pose_cue_latents: torch.Tensor | None = None,
        pose_masks: torch.Tensor | None = None,
        face_cue_latents: torch.Tensor | None = None,
        face_masks: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        history_mask: torch.Tensor | None = None,
        capture_block: int | None = None,
        stop_after_capture: bool = False,
        return_dict: bool = True,
    ) -> DirectAnimatorOutput | tuple:
        r"""Predict the flow velocity for a noisy video latent from a reference and driving cues.

        Args (B batch, C latent channels, T latent frames, H/W latent height/width):
            hidden_states: noisy video latent [B, C, T, H, W].
            timestep: [B], 1000 * sigma.
            encoder_hidden_states: text encoder output [B, L, text_dim], L <= text_len.
            ref_latents / ref_masks: reference latent [B, C, 1, H, W] and its 28-channel mask [B, 28, 1+T, H, W]
                (zeros over the video frames).
            pose_cue_latents / pose_masks: the pose cue video's latent [B, C, T, H, W] and the soft body mask
                packed 4 sub-frames per latent frame [B, 4, T, H, W]. None: no pose cue.
            face_cue_latents / face_masks: the same for the face cue and the soft face mask. None: no face cue.
            image_embeds: CLIP features [B, N, image_dim] (i2v models only).
            history_mask: [B, 4, T, H, W], ones on clean history frames.
            capture_block: also return the video tokens at the output of this block (1-based; Same2X's D).
            stop_after_capture: run only up to `capture_block` and return no sample (a teacher's forward).

        Returns:
            `DirectAnimatorOutput(sample, block_hidden_states)`, or a tuple of the non-None ones.
        """
        # 1-2. Tokens, rotations, timestep, context and cue tokens.
        prepared = self.prepare(
            hidden_states,
            timestep,
            encoder_hidden_states,
            ref_latents,
            ref_masks,
            pose_cue_latents,
            pose_masks,
            face_cue_latents,
            face_masks,
            image_embeds,
            history_mask,
        )
        frames, grid_h, grid_w = prepared["grid"]
        video = slice(grid_h * grid_w, None)  # the reference frame comes first
        # 3. Blocks.
        upto = capture_block if stop_after_capture else None
        x, captured = self.run_blocks(prepared.pop("x"), prepared["block_args"], upto, capture_block)
        captured = None if captured is None else captured[:, video]
        sample = None
        if not stop_after_capture:
            # 4. Head on the video tokens.
            sample = self.unpatchify(self.head(x[:, video], prepared["time_embedding"]), frames, grid_h, grid_w)
        output = DirectAnimatorOutput(sample=sample, block_hidden_states=captured)
        return output if return_dict else tuple(v for v in (sample, captured) if v is not None)
