"""The driver-dependence check: exact on a model that reads only one stream, deterministic, and logged by the
trainer every `train.dependence_every` steps."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from scail2.data.latent_cache import CachedSample, LatentCache
from scail2.errors import Scail2Error
from scail2.train.dependence import DEPENDENCE_SIGMAS, VARIANTS, dependence_inputs, driver_dependence
from tests.train.test_trainer import setup, train  # noqa: F401  (the module's cache fixture and CLI helper)


class PoseOnly(torch.nn.Module):
    """Predicts the velocity target's mean everywhere, plus the mean of the driving latents: it reads the
    driving latents and nothing else of the driver."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.config = SimpleNamespace(text_dim=8)

    def forward(self, hidden_states, pose_latents, **_):
        shift = self.scale * pose_latents.mean(dim=(1, 2, 3, 4), keepdim=True)
        return SimpleNamespace(sample=torch.zeros_like(hidden_states) + shift)


def _samples(setup, count=2):  # noqa: F811
    cache = LatentCache(setup / "cache")
    return [cache[i] for i in range(count)]


def test_zeroing_a_stream_the_model_ignores_changes_nothing(setup):  # noqa: F811
    samples = [
        CachedSample(s.key, s.task, s.mode, {**s.tensors, "pose_latents": s.tensors["pose_latents"] + 1.0})
        for s in _samples(setup)
    ]
    scores = driver_dependence(PoseOnly(), samples, sigmas=(0.5,))
    assert scores["rise_driving_masks"] == 0.0  # the model never reads the masks
    assert scores["rise_driving_latents"] != 0.0
    assert set(scores) == {"character_loss"} | {f"{p}{v}" for v in VARIANTS for p in ("rise_", "character_loss_zero_")}
    assert driver_dependence(PoseOnly(), samples, sigmas=(0.5,)) == scores  # same noise, same numbers


def test_inputs_weight_character_cells_and_refuse_caches_without_masks(setup):  # noqa: F811
    sample = _samples(setup, 1)[0]
    case = dependence_inputs(sample, 0.5, torch.Generator().manual_seed(0), text_dim=8)
    assert torch.equal(case["mask"], sample.tensors["target_masks"].float())
    assert case["inputs"]["history_mask"].sum() == 0  # no clean history frames
    bare = CachedSample(sample.key, sample.task, sample.mode, {"target_latents": sample.tensors["target_latents"]})
    with pytest.raises(Scail2Error, match="target_masks"):
        dependence_inputs(bare, 0.5, torch.Generator(), 8)
    with pytest.raises(Scail2Error, match="at least one"):
        driver_dependence(PoseOnly(), [])
    assert all(0 < s < 1 for s in DEPENDENCE_SIGMAS)


def test_trainer_logs_the_check_every_n_steps(setup, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    assert train(setup, run, "train.max_steps=2", "train.dependence_every=2", "train.dependence_samples=2") == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    checks = [row for row in rows if "rise_driving_latents" in row]
    assert [row["step"] for row in checks] == [2]
    assert checks[0]["character_loss"] > 0 and "rise_driving_masks" in checks[0]
