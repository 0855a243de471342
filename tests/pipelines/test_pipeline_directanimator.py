"""DirectAnimatorPipeline on a tiny random model: segments, cues, the saved cue settings, and `scail2 animate
--model <DirectAnimator folder>` end to end on the CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scail2.animate import load_pipeline
from scail2.cli import main
from scail2.errors import Scail2Error
from scail2.models.transformer_directanimator import DirectAnimatorTransformer3DModel
from scail2.pipelines.pipeline_directanimator import DirectAnimatorPipeline
from scail2.pipelines.pipeline_scail2 import SamplingSettings
from scail2.preprocess.cue_settings import CueSettings
from tests.models.test_transformer_directanimator import randomise
from tests.pipelines.components import tiny_vae
from tests.pipelines.media import (
    moving_square_frames,
    square_masks,
    write_mask_folder,
    write_reference,
    write_reference_mask,
    write_video,
)
from tests.pipelines.pinned.regenerate import pinned_inputs

FAST = SamplingSettings(sampler="euler", steps=2, shift=3.0, guidance_scale=1.0, segment_length=9, overlap=5)


def tiny_directanimator_pipeline(seed: int = 0) -> DirectAnimatorPipeline:
    torch.manual_seed(seed)
    transformer = DirectAnimatorTransformer3DModel.from_preset("tiny", model_type="t2v", cue_modulation_dim=10)
    randomise(transformer, seed + 1)  # trained-looking cue modules, so the cues reach the output
    settings = CueSettings(cutoff=0.25, grid=8).to_json()
    return DirectAnimatorPipeline(transformer=transformer.eval(), vae=tiny_vae(), cue_settings=settings)


@pytest.fixture(scope="module")
def pipeline() -> DirectAnimatorPipeline:
    return tiny_directanimator_pipeline()


def test_a_two_segment_video_has_every_driving_frame_and_repeats(pipeline):
    inputs = pinned_inputs(13, "animate")
    result = pipeline(inputs, FAST, seed=3, progress=False)
    assert result.frames.shape == (13, 32, 64, 3) and result.frames.dtype == torch.uint8
    assert [s.length for s in result.segments] == [9, 9]
    assert torch.equal(pipeline(inputs, FAST, seed=3, progress=False).frames, result.frames)


def test_the_cues_drive_the_output_and_given_cues_replace_the_extraction(pipeline):
    inputs = pinned_inputs(5, "animate")
    extracted = pipeline.extract_driving_cues(inputs)
    assert pipeline.cue_settings.cutoff == 0.25
    base = pipeline(inputs, FAST, seed=1, progress=False).frames
    given = pipeline(inputs, FAST, seed=1, progress=False, cues=extracted).frames
    assert torch.equal(base, given)
    extracted.pose = 255 - extracted.pose
    changed = pipeline(inputs, FAST, seed=1, progress=False, cues=extracted).frames
    assert (changed.float() - base.float()).abs().max() > 0


def test_replacement_mode_and_mismatched_cues_are_refused(pipeline):
    with pytest.raises(Scail2Error, match="animate only"):
        pipeline(pinned_inputs(5, "replace"), FAST, progress=False)
    cues = pipeline.extract_driving_cues(pinned_inputs(9, "animate"))
    with pytest.raises(Scail2Error, match="driving cues"):
        pipeline(pinned_inputs(5, "animate"), FAST, progress=False, cues=cues)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, pipeline):
    folder = tmp_path_factory.mktemp("directanimator") / "model"
    pipeline.save_pretrained(folder)
    return folder


def test_the_folder_loads_as_a_directanimator_pipeline_with_its_cue_settings(model_folder, pipeline):
    index = json.loads((model_folder / "model_index.json").read_text())
    assert index["_class_name"] == "DirectAnimatorPipeline" and index["cue_settings"]["grid"] == 8
    loaded = load_pipeline(model_folder, torch.device("cpu"))
    assert isinstance(loaded, DirectAnimatorPipeline)
    assert isinstance(loaded.transformer, DirectAnimatorTransformer3DModel)
    assert loaded.cue_settings == pipeline.cue_settings
    inputs = pinned_inputs(5, "animate")
    assert torch.equal(
        loaded(inputs, FAST, seed=2, progress=False).frames, pipeline(inputs, FAST, seed=2, progress=False).frames
    )


def test_animate_cli_with_a_directanimator_folder(model_folder, tmp_path):
    driving = write_video(tmp_path / "driving.mp4", moving_square_frames(11, 72, 120), fps=24)
    masks = write_mask_folder(tmp_path / "masks", square_masks(11, 72, 120))
    ref = write_reference(tmp_path / "ref.png", 90, 140)
    ref_mask = write_reference_mask(tmp_path / "ref_mask.png", 90, 140)
    out = tmp_path / "out.mp4"
    args = ["animate", "--model", model_folder, "--ref", ref, "--ref-mask", ref_mask, "--driving", driving]
    args += ["--driving-mask", masks, "--out", out, "--height", "64", "--width", "96", "--sampler", "euler"]
    args += ["--steps", "2", "--segment-length", "9", "--overlap", "5", "--cfg", "1"]
    assert main([str(a) for a in args]) == 0
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["frames"] == 11 and len(manifest["segments"]) == 2
    assert np.isfinite(manifest["timings_s"]["total_s"])


def test_batch_runs_a_directanimator_job(model_folder, tmp_path):
    from scail2.batch import run_batch

    driving = write_video(tmp_path / "driving.mp4", moving_square_frames(11, 72, 120), fps=24)
    write_mask_folder(tmp_path / "masks", square_masks(11, 72, 120))
    write_reference(tmp_path / "ref.png", 90, 140)
    write_reference_mask(tmp_path / "ref_mask.png", 90, 140)
    job = {"ref": "ref.png", "ref_mask": "ref_mask.png", "driving": driving.name, "driving_mask": "masks"}
    defaults = {"model": str(model_folder), "height": 64, "width": 96, "sampler": "euler", "steps": 1}
    defaults |= {"segment_length": 9, "overlap": 5, "cfg": 1, "qa": False}
    (tmp_path / "jobs.yaml").write_text(json.dumps({"out": "renders", "defaults": defaults, "jobs": [job]}))
    [row] = run_batch(tmp_path / "jobs.yaml")
    assert row["status"] == "done", row.get("error")
    assert row["frames"] == 11


def test_animate_cli_reuses_a_reviewed_cue_folder(model_folder, tmp_path, capsys):
    from scail2.preprocess.mask_folder import MaskFolderWriter, palette_to_identities

    masks = square_masks(11, 72, 120, colors=((0, 0, 255),))
    driving = write_video(tmp_path / "driving.mp4", moving_square_frames(11, 72, 120), fps=24)
    with MaskFolderWriter(tmp_path / "masks") as writer:
        for frame in palette_to_identities(masks):
            writer.write_frame(frame)
        writer.commit({"height": 72, "width": 120, "fps": "24", "identities": [{"index": 1, "name": "blue"}]})
    cue_args = ["cues", "--driving", driving, "--masks", tmp_path / "masks", "--cue-grid", "8"]
    assert main([str(a) for a in [*cue_args, "--out", tmp_path / "cues", "--cue-cutoff", "0.25"]]) == 0
    assert main([str(a) for a in [*cue_args, "--out", tmp_path / "other", "--cue-cutoff", "0.5"]]) == 0
    ref = write_reference(tmp_path / "ref.png", 90, 140, rgba=True)
    args = [
        "animate",
        "--model",
        model_folder,
        "--ref",
        ref,
        "--driving",
        driving,
        "--driving-mask",
        tmp_path / "masks",
    ]
    args += ["--height", "64", "--width", "96", "--sampler", "euler", "--steps", "1", "--segment-length", "9"]
    args += ["--overlap", "5", "--cfg", "1"]
    assert main([str(a) for a in [*args, "--out", tmp_path / "out.mp4", "--cues", tmp_path / "cues"]]) == 0
    assert json.loads((tmp_path / "out.json").read_text())["request"]["cues"] == str(tmp_path / "cues")
    capsys.readouterr()
    assert main([str(a) for a in [*args, "--out", tmp_path / "bad.mp4", "--cues", tmp_path / "other"]]) == 2
    assert "re-run `scail2 cues` with the model's settings" in capsys.readouterr().err


def test_cues_made_at_the_video_size_follow_the_resize_and_crop():
    from scail2.preprocess.cues import cues_at_size, extract_cues

    frames = moving_square_frames(5, 72, 120)
    ids = (square_masks(5, 72, 120)[..., 0] > 0).astype(np.uint8)
    sized = cues_at_size(extract_cues(frames, ids), (64, 96))
    assert sized.pose.shape == (5, 64, 96, 3) and sized.body_mask.shape == (5, 64, 96)
    # 72x120 covers 64x96 resized to 64x106 (x 64/72 in height, 106/120 in width), then 5 columns cropped
    box = extract_cues(frames, ids).head_boxes[0, 0]
    scale = np.array([106 / 120, 64 / 72] * 2)
    np.testing.assert_allclose(sized.head_boxes[0, 0], box * scale - [5, 0, 5, 0], rtol=1e-5)
