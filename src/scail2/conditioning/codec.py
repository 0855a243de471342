"""The video VAE as the model sees it: pixels in [-1, 1] <-> normalised latents.

This codec alone owns latent normalisation (z = (mu - mean) / std per channel, from the VAE's own config),
so no other code repeats the mean/std arithmetic. Encoding takes the posterior mode, as upstream does.
"""

from __future__ import annotations

import torch

from scail2.conditioning.geometry import SPATIAL_STRIDE, TEMPORAL_STRIDE


class VideoLatentCodec:
    """Wraps a diffusers `AutoencoderKLWan` (or any VAE with the same encode/decode and latents_mean/std).

    `device` is where the VAE computes; by default where its weights are (an offloaded VAE's are elsewhere).
    """

    def __init__(self, vae, device: torch.device | None = None):
        self.vae = vae
        self._device = device
        config = vae.config
        self.mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.temporal_stride = int(getattr(config, "scale_factor_temporal", TEMPORAL_STRIDE) or TEMPORAL_STRIDE)
        self.spatial_stride = int(getattr(config, "scale_factor_spatial", SPATIAL_STRIDE) or SPATIAL_STRIDE)

    @property
    def device(self) -> torch.device:
        return self._device or next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T_lat, h, w) for 4n+1 pixel frames of height x width."""
        return (frames - 1) // self.temporal_stride + 1, height // self.spatial_stride, width // self.spatial_stride

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] -> normalised latent [B, z, T_lat, H/8, W/8] fp32."""
        posterior = self.vae.encode(video.to(self.device, self.dtype)).latent_dist
        mu = posterior.mode().float()
        return (mu - self.mean.to(mu.device)) / self.std.to(mu.device)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised latent [B, z, T_lat, h, w] -> pixels [B, 3, 1 + 4(T_lat - 1), 8h, 8w] in [-1, 1] fp32."""
        device = self.device
        z = latent.float().to(device) * self.std.to(device) + self.mean.to(device)
        return self.vae.decode(z.to(self.dtype)).sample.float().clamp(-1, 1)
