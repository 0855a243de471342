"""The demo VAE trainer: the unclamped decode, the CLI (train, resume, export), overfitting, the export's contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scail2.cli import main
from scail2.data.pairs import ProceduralPairGenerator, SynthConfig
from scail2.data.shards import write_dataset
from scail2.errors import Scail2Error
from scail2.train.vae import (
    ClipPlan,
    PairVideos,
    VaeArchConfig,
    VaeTrainer,
    build_vae,
    decode_unclamped,
    load_vae_config,
    pipeline_inputs,
)

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_vae.yaml"
# A VAE small enough for seconds per run; frames of 32x48 (9 frames) so a swapped height/width fails.
TINY = [
    "model.base_dim=4",
    "model.dim_mult=[1,2,2]",
    "train.batch_size=2",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "train.preview_every=2",
    "train.preview_pairs=1",
    "data.clip_frames=5",
    "data.crop=16",
    "export.stats_pairs=3",
    "train.threads=1",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vae") / "data"
    write_dataset(
        ProceduralPairGenerator(SynthConfig(height=32, width=48, frames=9, seed=5)),
        root,
        5,
        shard_size=3,
        progress=False,
    )
    return root


def train(data: Path, out: Path, *overrides: str, flags: tuple[str, ...] = ()) -> int:
    # flags before the positional overrides: argparse takes positionals in one run
    return main(
        ["train-vae", "--config", str(CONFIG), "--data", str(data), "--out", str(out), *flags, *TINY, *overrides]
    )


def losses(run: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def whole_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vae") / "whole"
    assert train(data, out, "train.max_steps=4") == 0
    return out


@pytest.mark.parametrize(
    "patch_size, dim_mult, residual, z_dim",
    [(None, [1, 2, 2, 2], False, 16), (2, [1, 2, 2], False, 16), (2, [1, 2, 2], True, 12)],
)
def test_unclamped_decode_matches_diffusers_decode(patch_size, dim_mult, residual, z_dim):
    config = VaeArchConfig(base_dim=4, dim_mult=dim_mult, patch_size=patch_size, is_residual=residual, z_dim=z_dim)
    vae = build_vae(config, seed=3).eval()
    torch.manual_seed(0)
    z = 3 * torch.randn(2, z_dim, 3, 2, 3)  # large latents drive some pixels outside [-1, 1]
    with torch.no_grad():
        unclamped = decode_unclamped(vae, z)
        reference = vae.decode(z).sample
    assert unclamped.shape == reference.shape == (2, 3, 9, 16, 24)
    assert unclamped.abs().max() > 1  # so the clamp below is exercised
    torch.testing.assert_close(unclamped.clamp(-1, 1), reference, rtol=0, atol=0)


def test_clip_plan_is_deterministic_and_shaped(data):
    config = load_vae_config(CONFIG, TINY)
    plan = ClipPlan(PairVideos(data), config.data, batch_size=3, seed=7)
    (first, masks), (again, _) = plan.batch(5), ClipPlan(PairVideos(data), config.data, batch_size=3, seed=7).batch(5)
    assert first.shape == (3, 3, 5, 16, 16) and first.dtype == torch.float32 and masks is None
    assert torch.equal(first, again)
    assert not torch.equal(first, plan.batch(6)[0])
    assert -1 <= first.min() and first.max() <= 1
    assert sorted(plan.pair(k) for k in range(5)) == list(range(5))  # an epoch visits every pair once
    with_masks = ClipPlan(PairVideos(data), config.data, batch_size=3, seed=7, with_masks=True).batch(5)
    assert torch.equal(with_masks[0], first)  # asking for masks changes no pixel
    assert with_masks[1].shape == (3, 1, 5, 16, 16)


def test_character_masks_follow_the_crop_and_flip(data):
    from scail2.train.vae import model_video

    config = load_vae_config(
        CONFIG, TINY + ["data.half_resolution_probability=0", "data.clip_frames=9", "data.crop=24"]
    )
    videos = PairVideos(data)
    plan = ClipPlan(videos, config.data, batch_size=4, seed=1, with_masks=True)
    clips, masks = plan.batch(0)
    for slot in range(4):
        index = plan.pair(slot)
        for stream in config.data.streams:
            full = model_video(videos.video(index, stream))
            mask = torch.from_numpy(videos.character_mask(index, stream)).float()[None]
            found = [
                (top, left, flip)
                for top in range(9)
                for left in range(25)
                for flip in (False, True)
                if torch.equal(_crop(full, top, left, flip), clips[slot])
            ]
            if found:
                top, left, flip = found[0]
                assert torch.equal(_crop(mask, top, left, flip), masks[slot])
                assert 0 < masks[slot].mean() < 1  # the procedural pairs always show a character
                break
        else:
            raise AssertionError(f"slot {slot}: clip is no crop of pair {index}")


def _crop(video: torch.Tensor, top: int, left: int, flip: bool) -> torch.Tensor:
    cropped = video[:, :, top : top + 24, left : left + 24]
    return cropped.flip(-1) if flip else cropped


def test_foreground_weight_up_weights_character_pixels():
    from scail2.train.vae import weighted_mean

    error = torch.zeros(2, 3, 5, 4, 6)
    masks = torch.zeros(2, 1, 5, 4, 6)
    error[..., :2, :] = 1.0  # error only on the top half ...
    masks[..., :2, :3] = 1.0  # ... of which the left half is character
    assert weighted_mean(error, None) == pytest.approx(0.5)
    assert weighted_mean(error, torch.ones_like(masks)) == pytest.approx(0.5)
    weight = 1 + 3 * masks  # 1/4 of the pixels weigh 4: total weight 7/4 per pixel on average
    assert weighted_mean(error, weight) == pytest.approx((0.25 * 4 + 0.25 * 1) / 1.75)


def test_temporal_loss_sees_changing_errors_not_constant_ones():
    from scail2.train.vae import temporal_l1

    target = torch.randn(2, 3, 5, 4, 6, generator=torch.Generator().manual_seed(0))
    assert temporal_l1(target + 0.3, target) < 1e-6  # an error that stays put does not flicker
    offsets = torch.tensor([0.0, 0.2, 0.0, 0.2, 0.0])[None, None, :, None, None]
    assert temporal_l1(target + offsets, target) == pytest.approx(0.2)  # every frame step changes it by 0.2
    assert temporal_l1(target[:, :, :1] + 1, target[:, :, :1]) == 0  # one frame: nothing to compare


def test_first_frame_weight_scales_frame_zero_alone():
    from scail2.train.vae import VaeLossConfig, pixel_weights

    clips = torch.zeros(2, 3, 5, 4, 6)
    masks = torch.zeros(2, 1, 5, 4, 6)
    masks[:, :, :, 1, 2] = 1.0
    assert pixel_weights(clips, VaeLossConfig(), masks) is None  # neutral: the plain mean
    weight = pixel_weights(clips, VaeLossConfig(first_frame_weight=5.0), None)
    assert weight.shape == (2, 1, 5, 4, 6)
    assert torch.equal(weight[:, :, 0], torch.full((2, 1, 4, 6), 5.0))
    assert torch.equal(weight[:, :, 1:], torch.ones(2, 1, 4, 4, 6))
    both = pixel_weights(clips, VaeLossConfig(foreground_weight=3.0, first_frame_weight=2.0), masks)
    assert both[0, 0, 0, 1, 2] == 8.0 and both[0, 0, 0, 0, 0] == 2.0 and both[1, 0, 4, 1, 2] == 4.0
    assert both[1, 0, 4, 0, 0] == 1.0
    with pytest.raises(Scail2Error, match="first_frame_weight"):
        load_vae_config(CONFIG, ["loss.first_frame_weight=0"])


def test_resumed_run_equals_an_uninterrupted_one(data, whole_run, tmp_path):
    split = tmp_path / "split"
    assert train(data, split, "train.max_steps=4", flags=("--max-steps", "2")) == 0
    assert not (split / "export").exists()  # stopped early: no release yet
    assert sorted(p.name for p in (split / "checkpoints").iterdir()) == ["step-00000002"]  # no .partial left
    assert train(data, split, "train.max_steps=4", flags=("--resume",)) == 0
    assert losses(split) == losses(whole_run)
    assert (split / "previews" / "step-00000004.png").is_file()
    whole, resumed = (
        load_file(str(run / "export" / "vae" / "diffusion_pytorch_model.safetensors")) for run in (whole_run, split)
    )
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


def test_loss_falls_on_a_tiny_overfit_set(tmp_path):
    one_pair = tmp_path / "one"
    write_dataset(
        ProceduralPairGenerator(SynthConfig(height=32, width=40, frames=9, seed=8)), one_pair, 1, progress=False
    )
    config = load_vae_config(
        CONFIG,
        TINY
        + [
            "train.max_steps=30",
            "optim.warmup_steps=3",
            "optim.lr=3e-3",
            "data.streams=[target]",
            "data.half_resolution_probability=0",
            "data.clip_frames=9",
            "data.crop=32",
            "data.flip=false",
            "loss.sample_posterior=false",
            "train.preview_every=0",
            "train.checkpoint_every=100",
        ],
    )
    VaeTrainer(config, one_pair, tmp_path / "overfit").train()
    curve = list(losses(tmp_path / "overfit").values())
    assert sum(curve[-5:]) / 5 < 0.5 * sum(curve[:3]) / 3, curve


def test_export_loads_and_round_trips_through_the_codec(data, whole_run):
    from diffusers import AutoencoderKLWan

    from scail2.conditioning import VideoLatentCodec

    vae = AutoencoderKLWan.from_pretrained(whole_run / "export" / "vae")
    assert next(vae.parameters()).dtype == torch.float32  # stored as fp16, loaded as fp32
    codec, videos = VideoLatentCodec(vae), PairVideos(data)
    expected = {"target": (1, 16, 3, 4, 6), "driving_half": (1, 16, 3, 2, 3), "reference": (1, 16, 1, 4, 6)}
    latents = []
    for index in range(3):  # export.stats_pairs
        for name, video in pipeline_inputs(videos, index).items():
            latent = codec.encode(video)
            assert latent.shape == expected[name]
            assert codec.decode(latent).shape == video.shape
            latents.append(latent.transpose(0, 1).flatten(1))
    pooled = torch.cat(latents, dim=1).double()  # [16, every latent cell]
    torch.testing.assert_close(pooled.mean(1), torch.zeros(16, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(pooled.std(1, correction=0), torch.ones(16, dtype=torch.float64), atol=1e-4, rtol=0)


def test_wider_latents_export_with_their_own_statistics(data, tmp_path):
    from diffusers import AutoencoderKLWan

    from scail2.conditioning import VideoLatentCodec

    assert train(data, tmp_path / "z24", "model.z_dim=24", "train.max_steps=2", "train.preview_every=0") == 0
    vae = AutoencoderKLWan.from_pretrained(tmp_path / "z24" / "export" / "vae")
    assert vae.config.z_dim == 24 and len(vae.config.latents_mean) == len(vae.config.latents_std) == 24
    latent = VideoLatentCodec(vae).encode(pipeline_inputs(PairVideos(data), 0)["target"])
    assert latent.shape == (1, 24, 3, 4, 6)
    assert torch.isfinite(latent).all() and latent.std() > 0.1  # normalised by the export's statistics


def test_a_new_sitting_can_start_from_an_export(data, whole_run, tmp_path):
    config = load_vae_config(CONFIG, TINY + [f"train.init_from={whole_run / 'export' / 'vae'}"])
    trainer = VaeTrainer(config, data, tmp_path / "next")
    exported = load_file(str(whole_run / "export" / "vae" / "diffusion_pytorch_model.safetensors"))
    for name, value in trainer.vae.state_dict().items():
        assert torch.equal(value, exported[name].float()), name
    other = load_vae_config(CONFIG, TINY + ["model.base_dim=8", f"train.init_from={whole_run / 'export' / 'vae'}"])
    with pytest.raises(Scail2Error, match="another architecture"):
        VaeTrainer(other, data, tmp_path / "other")


def test_a_decoder_only_sitting_keeps_the_latents(data, whole_run, tmp_path):
    start = whole_run / "export" / "vae"
    assert (
        train(
            data,
            tmp_path / "dec",
            f"train.init_from={start}",
            "train.freeze_encoder=true",
            "train.max_steps=2",
            "train.preview_every=0",
            "optim.warmup_steps=1",
        )
        == 0
    )
    before = load_file(str(start / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(tmp_path / "dec" / "export" / "vae" / "diffusion_pytorch_model.safetensors"))
    frozen = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    trained = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and trained
    for key in frozen:
        assert torch.equal(before[key], after[key]), key
    assert any(not torch.equal(before[key], after[key]) for key in trained)
    folders = (start, tmp_path / "dec" / "export" / "vae")
    configs = [json.loads((folder / "config.json").read_text()) for folder in folders]
    assert configs[0]["latents_mean"] == configs[1]["latents_mean"]  # the same latents, so caches stay valid
    assert configs[0]["latents_std"] == configs[1]["latents_std"]
    with pytest.raises(Scail2Error, match="freeze_encoder"):
        VaeTrainer(load_vae_config(CONFIG, TINY + ["train.freeze_encoder=true"]), data, tmp_path / "no-init")


def test_a_wider_decoder_learns_on_the_kept_encoder(data, whole_run, tmp_path):
    start = whole_run / "export" / "vae"
    wider = ["model.decoder_base_dim=6", f"train.init_from={start}"]
    trainer = VaeTrainer(load_vae_config(CONFIG, TINY + wider + ["train.freeze_encoder=true"]), data, tmp_path / "w")
    exported = load_file(str(start / "diffusion_pytorch_model.safetensors"))
    mine = trainer.vae.state_dict()
    assert all(torch.equal(mine[k], exported[k].float()) for k in exported if k.startswith(("encoder.", "quant_conv.")))
    assert mine["decoder.conv_in.weight"].shape[0] != exported["decoder.conv_in.weight"].shape[0]
    assert all(not p.requires_grad for n, p in trainer.vae.named_parameters() if n.startswith("encoder."))
    assert all(p.requires_grad for n, p in trainer.vae.named_parameters() if n.startswith("decoder."))
    with pytest.raises(Scail2Error, match="VAE of another architecture"):  # the whole VAE must match otherwise
        VaeTrainer(load_vae_config(CONFIG, TINY + wider), data, tmp_path / "w2")
    with pytest.raises(Scail2Error, match="encoder of another architecture"):
        VaeTrainer(
            load_vae_config(
                CONFIG, TINY + ["model.base_dim=8", f"train.init_from={start}", "train.freeze_encoder=true"]
            ),
            data,
            tmp_path / "w3",
        )


def test_bad_input_is_a_one_line_error(data, tmp_path, capsys):
    assert train(data, tmp_path / "run", flags=("--resume",)) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err
    assert train(data, tmp_path / "run", "data.clip_frames=13") == 2
    assert "lower data.clip_frames" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(Scail2Error, match="needs 8x"):
        load_vae_config(CONFIG, ["model.dim_mult=[1,2,2,2]"])  # patch 2 with 4 levels: 16x
    with pytest.raises(Scail2Error, match="last two"):
        load_vae_config(CONFIG, ["model.is_residual=true", "model.dim_mult=[1,2,4]"])  # shortcut 32 -> 64 at 1x
    with pytest.raises(Scail2Error, match="4n\\+1"):
        load_vae_config(CONFIG, ["data.clip_frames=8"])
    assert train(tmp_path / "missing", tmp_path / "run") == 2
    assert "meta.json" in capsys.readouterr().err
