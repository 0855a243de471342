"""The web app's steps without a browser: upload limits, masks and their identity sheet, the plan, a run on the
bundled demo model with progress, and a cancel that stops within one step and writes nothing."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from scail2.app import workflow
from scail2.errors import Scail2Error


def test_upload_limits_refuse_before_any_work(app_inputs, tmp_path):
    video, ref = app_inputs["video"], app_inputs["ref"]
    info = workflow.check_video_upload(video, workflow.UploadLimits())
    assert (info.width, info.height) == (192, 128)
    with pytest.raises(Scail2Error, match=r"MiB limit; upload a shorter"):
        workflow.check_video_upload(video, workflow.UploadLimits(max_bytes=100))
    with pytest.raises(Scail2Error, match=r"192x128, over the 100-pixel limit"):
        workflow.check_video_upload(video, workflow.UploadLimits(max_side=100))
    with pytest.raises(Scail2Error, match=r"lasts 1.1 s, over the 0.5 s limit"):
        workflow.check_video_upload(video, workflow.UploadLimits(max_seconds=0.5))
    with pytest.raises(Scail2Error, match=r"reference image ref.png is 192x128"):
        workflow.check_image_upload(ref, workflow.UploadLimits(max_side=64))
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    with pytest.raises(Scail2Error, match=r"cannot be read as an image"):
        workflow.check_image_upload(not_image, workflow.UploadLimits())


@pytest.fixture(scope="module")
def accepted(app_inputs, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("session")
    masks = workflow.make_masks(workdir, app_inputs["video"], app_inputs["ref"], workflow.MaskOptions())
    return workdir, masks


def test_masks_preview_and_identity_sheet(app_inputs, accepted, tmp_path):
    preview = accepted[1]
    assert preview.meta["frames"] == 17 and preview.preview_video.is_file()
    sheet = preview.identities
    assert sheet.dtype == np.uint8 and sheet.shape[0] == 360 + 24
    assert tuple(sheet[-12, 20]) == (0, 0, 255)  # the legend shows identity 1 in blue
    redo = workflow.make_masks(tmp_path, app_inputs["video"], app_inputs["ref"], workflow.MaskOptions(dilate=2))
    assert redo.meta["settings"]["refinement"]["dilate"] == 2  # redone with the new settings
    assert (redo.folder / "frames" / "000000.png").is_file()


def bundled_run(app_inputs, masks, out):
    """The request and plan of a 17-frame run of the bundled model with default choices."""
    request = workflow.model_request(
        None, app_inputs["ref"], app_inputs["video"], masks.folder, out, workflow.RunChoices()
    )
    return request, workflow.plan_run(request, 17)


def test_plan_then_run_on_the_bundled_model(app_inputs, accepted):
    workdir, masks = accepted
    out = workdir / "run" / "output.mp4"
    request, plan = bundled_run(app_inputs, masks, out)
    assert (plan.segments, plan.steps) == (1, 10)
    assert "GPU peak" in plan.describe()
    torch.manual_seed(0)
    seen = []
    job = workflow.run_blocking(request, plan, lambda progress: seen.append(progress.step))
    assert job.error is None, job.error
    assert job.progress.step == 10 and job.progress.describe() == "segment 1/1, step 10/10"
    assert job.progress.bar(10) == "[##########] 100%"
    assert workflow.Progress(step=3, steps=12, segments=2, steps_per_segment=6).bar(8) == "[##------] 25%"
    # the QA report, named after the video, joins the downloads
    assert [path.name for path in job.files] == ["output.mp4", "output.json", "output.qa.json", "output.qa.png"]
    assert all(path.is_file() for path in job.files)
    assert json.loads(job.manifest_text())["frames"] == 17


def test_cancel_stops_within_one_step_and_writes_nothing(app_inputs, accepted):
    workdir, masks = accepted
    out = workdir / "cancelled" / "output.mp4"
    request, plan = bundled_run(app_inputs, masks, out)
    job = workflow.RunJob(request, plan)
    job.cancel()  # pressed before the first step ends: the first step's callback stops the run
    job.start().wait(120)
    assert isinstance(job.error, workflow.Cancelled) and job.progress.step == 1
    assert job.files == [] and not out.parent.exists() or not any(out.parent.iterdir())


def test_a_converted_model_folder_runs_too(app_inputs, accepted, tmp_path):
    from tests.pipelines.components import tiny_pipeline

    model = tmp_path / "model"
    tiny_pipeline(seed=0, text=False, image=False).save_pretrained(model)
    workdir, masks = accepted
    choices = workflow.RunChoices(preset="fast", height=64, width=96)
    request = workflow.model_request(
        model, app_inputs["ref"], app_inputs["video"], masks.folder, tmp_path / "o.mp4", choices
    )
    request = dataclasses.replace(request, settings=dataclasses.replace(request.settings, steps=2, segment_length=9))
    plan = workflow.plan_run(request, 17)
    assert (plan.segments, plan.steps) == (3, 6) and "model" in plan.memory_table
    job = workflow.run_blocking(request, plan)
    assert job.error is None, job.error
    assert job.progress.step == 6 and job.manifest["model_fingerprint"] and not job.manifest["bundled_model"]
