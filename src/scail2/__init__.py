"""SCAIL-2: skeleton-free character animation with a latent video diffusion transformer.

    from scail2 import SCAIL2Pipeline, SCAIL2Transformer3DModel, AnimationInputs, SamplingSettings

The public names load on first use, so `scail2 --help` and the light commands do not import torch models.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "AnimationInputs": "scail2.conditioning",
    "MemorySettings": "scail2.pipelines.memory",
    "SamplingSettings": "scail2.pipelines.pipeline_scail2",
    "SAMPLING_PRESETS": "scail2.pipelines.pipeline_scail2",
    "SCAIL2Pipeline": "scail2.pipelines.pipeline_scail2",
    "SCAIL2Transformer3DModel": "scail2.models.transformer_scail2",
    "VideoLatentCodec": "scail2.conditioning",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'scail2' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
