"""Inputs of the app tests: a fixed-camera walk (17 frames, one segment of the bundled model) and an RGBA reference."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from scail2.data.pairs import ProceduralPairGenerator, SynthConfig
from tests.pipelines.media import write_video
from tests.preprocess.segmentation_clips import fixed_camera_clip


@pytest.fixture(scope="session")
def app_inputs(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("app_inputs")
    clip = fixed_camera_clip(0, "walk", frames=17)
    video = write_video(folder / "walk.mp4", clip.frames, fps=16)
    sample = ProceduralPairGenerator(SynthConfig(128, 192, 1, ("animate",), seed=0)).generate(1)
    rgba = np.dstack([sample.reference, np.where(sample.reference_ids > 0, 255, 0).astype(np.uint8)])
    Image.fromarray(rgba).save(folder / "ref.png")
    return {"video": video, "ref": folder / "ref.png", "clip": clip, "dir": folder}
