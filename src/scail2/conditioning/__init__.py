"""Tensors -> model inputs: latent geometry, the VAE codec, mask tensors, conditioning streams and inputs.

It sits between `scail2.preprocess` (files -> palette tensors at the target size) and `scail2.models`; the
pipeline, the latent cache, preference data, validation and evaluation all encode through it, so training and
generation see identical inputs.
"""

from scail2.conditioning.codec import VideoLatentCodec
from scail2.conditioning.geometry import (
    DRIVING_INJECTIONS,
    DRIVING_SCALES,
    SPATIAL_STRIDE,
    TEMPORAL_STRIDE,
    check_driving_injection,
    check_driving_scale,
    driving_latent_grid,
    driving_resolution,
    frames_to_model_video,
    half_resolution,
    latent_frame_count,
    latent_grid,
    model_video_to_frames,
    pad_frames,
    uint8_to_signed_unit,
    valid_length,
)
from scail2.conditioning.inputs import AnimationInputs, EncodedReference, SegmentConditions
from scail2.conditioning.masks import (
    DETAIL_TAGS,
    HISTORY_MASK_CHANNELS,
    MASK_CHANNELS,
    compress_mask_to_latent,
    coverage_to_latent,
    detail_to_latent,
    history_mask,
    mask_color_planes,
    mask_to_latent,
    reference_mask_tensor,
)
from scail2.conditioning.streams import (
    DRIVING_SIGNALS,
    check_driving_signal,
    compress_driving_masks,
    compress_reference_mask,
    driving_signal_frames,
    encode_driving,
    encode_video,
)

__all__ = [
    "DETAIL_TAGS",
    "DRIVING_INJECTIONS",
    "DRIVING_SCALES",
    "DRIVING_SIGNALS",
    "HISTORY_MASK_CHANNELS",
    "MASK_CHANNELS",
    "SPATIAL_STRIDE",
    "TEMPORAL_STRIDE",
    "AnimationInputs",
    "EncodedReference",
    "SegmentConditions",
    "VideoLatentCodec",
    "check_driving_injection",
    "check_driving_scale",
    "check_driving_signal",
    "compress_driving_masks",
    "compress_mask_to_latent",
    "compress_reference_mask",
    "coverage_to_latent",
    "detail_to_latent",
    "driving_latent_grid",
    "driving_resolution",
    "driving_signal_frames",
    "encode_driving",
    "encode_video",
    "frames_to_model_video",
    "half_resolution",
    "history_mask",
    "latent_frame_count",
    "latent_grid",
    "mask_color_planes",
    "mask_to_latent",
    "model_video_to_frames",
    "pad_frames",
    "reference_mask_tensor",
    "uint8_to_signed_unit",
    "valid_length",
]
