"""One mode vocabulary, the package's public face, and pair -> inputs written once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scail2.conditioning import DETAIL_TAGS, AnimationInputs
from scail2.data.pairs import ProceduralPairGenerator, SynthConfig, driving_condition
from scail2.data.world import TAG_FACE, TAG_LIMB_END
from scail2.errors import Scail2Error
from scail2.modes import MODES, parse_mode
from scail2.preprocess.resize import image_to_model


def test_the_package_face_exports_the_pipeline_api():
    import scail2
    from scail2 import AnimationInputs as exported
    from scail2 import SamplingSettings, SCAIL2Pipeline, SCAIL2Transformer3DModel

    assert exported is AnimationInputs
    assert SCAIL2Pipeline.__name__ == "SCAIL2Pipeline" and SCAIL2Transformer3DModel.__name__.startswith("SCAIL2")
    assert SamplingSettings().steps >= 1
    with pytest.raises(AttributeError):
        scail2.NoSuchThing  # noqa: B018


def test_modes_accept_the_stored_spellings_and_nothing_else():
    assert MODES == ("animate", "replace")
    assert [parse_mode(w) for w in ("animate", "replace", "animation", "replacement")] == [
        "animate",
        "replace",
        "animate",
        "replace",
    ]
    with pytest.raises(Scail2Error, match="--mode must be one of animate, replace, got 'dance'"):
        parse_mode("dance", "--mode")


def test_detail_tags_match_the_procedural_world():
    assert DETAIL_TAGS == {"limb_ends": TAG_LIMB_END, "face": TAG_FACE}


@pytest.mark.parametrize("task", ["animate", "replace"])
def test_from_pair_converts_every_stream_at_the_pair_size(task):
    sample = ProceduralPairGenerator(SynthConfig(height=32, width=48, frames=5, seed=4, tasks=(task,))).generate(0)
    inputs = AnimationInputs.from_pair(sample)
    assert inputs.mode == task
    torch.testing.assert_close(inputs.reference, image_to_model(sample.reference, (32, 48)), rtol=0, atol=0)
    torch.testing.assert_close(inputs.reference_mask, image_to_model(sample.reference_mask(), (32, 48)), rtol=0, atol=0)
    assert inputs.driving.dtype == torch.uint8 and inputs.driving.shape == (5, 32, 48, 3)
    np.testing.assert_array_equal(inputs.driving.numpy(), sample.driving)
    np.testing.assert_array_equal(inputs.driving_masks.numpy(), sample.driving_mask())


def test_from_pair_takes_a_replacement_driving_signal():
    sample = ProceduralPairGenerator(SynthConfig(height=32, width=32, frames=5, seed=2)).generate(0)
    skeleton, bones = driving_condition(sample, "skeleton")
    inputs = AnimationInputs.from_pair(sample, skeleton, bones, prompt="a walk")
    np.testing.assert_array_equal(inputs.driving.numpy(), skeleton)
    np.testing.assert_array_equal(inputs.driving_masks.numpy(), bones)
    assert inputs.prompt == "a walk"
    inputs.driving[0, 0, 0] = 7  # a copy: the pair's arrays stay untouched
    assert not np.shares_memory(inputs.driving.numpy(), skeleton)
