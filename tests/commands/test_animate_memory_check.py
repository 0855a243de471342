"""`scail2 animate` checks the memory plan before loading any weight, on a GPU, and refuses in one line."""

from __future__ import annotations

import pytest
import torch

from scail2 import animate
from scail2.animate import AnimateRequest, planned_options
from scail2.errors import Scail2Error
from scail2.pipelines.memory import MemorySettings
from tests.pipelines.media import moving_square_frames, write_reference, write_video


class _Loading(Exception):
    """Raised by a stand-in loader: the run got as far as loading the weights."""


@pytest.fixture
def files(tmp_path):
    return {
        "ref": write_reference(tmp_path / "ref.png", 90, 140),
        "driving": write_video(tmp_path / "driving.mp4", moving_square_frames(9, 72, 120), fps=24),
    }


def test_the_flags_become_the_plans_options():
    request = AnimateRequest(
        ref="r.png",
        driving="d.mp4",
        out="o.mp4",
        dtype="fp32",
        quantize="fp8",
        memory=MemorySettings(offload="group", cfg_mode="auto", vae_tiling=True, encoders_on_cpu=True),
    )
    options = planned_options(request, torch.device("cuda"))
    assert (options.dtype, options.quantize, options.offload, options.cfg_mode) == (
        "fp32",
        "fp8",
        "group",
        "sequential",
    )
    assert options.vae_tiling and options.encoders == "cpu"
    assert planned_options(AnimateRequest(ref="r", driving="d", out="o.mp4"), torch.device("cuda")).dtype == "bf16"


def test_a_job_the_card_cannot_hold_is_refused_before_loading(files, tmp_path, monkeypatch):
    from scail2.pipelines import memory_plan
    from scail2.pipelines.memory_inventory import write_config_folder

    model = write_config_folder(tmp_path / "scail2-14b", "14b")  # configs only: nothing could be loaded
    monkeypatch.setattr(animate, "resolve_device", lambda _: torch.device("cuda"))
    monkeypatch.setattr(memory_plan, "detected_gpu_bytes", lambda: 8 * 2**30)
    monkeypatch.setattr(memory_plan, "detected_host_bytes", lambda: 64 * 2**30)
    loaded = []

    def load(*args, **kwargs):
        loaded.append(1)
        raise _Loading

    monkeypatch.setattr(animate, "load_pipeline", load)
    request = AnimateRequest(ref=files["ref"], driving=files["driving"], out=tmp_path / "o.mp4", model=model)
    with pytest.raises(Scail2Error) as error:
        animate.run_animate(request)
    assert "\n" not in str(error.value) and not loaded
    unchecked = AnimateRequest(**{**request.__dict__, "memory_check": False})
    with pytest.raises(_Loading):  # past the check, into loading
        animate.run_animate(unchecked)
    assert loaded == [1]
