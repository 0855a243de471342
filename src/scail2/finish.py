"""After generation: the QA report of every output and the production outputs with alpha.

`animate` and `batch` call `segment_hooks_for` before generating (per-segment QA with `--qa-retry`) and
`finish_outputs` after the MP4 is written; the returned fields go into the manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scail2.conditioning.geometry import model_video_to_frames
from scail2.eval import qa
from scail2.pipelines.segment_hooks import SegmentHooks
from scail2.preprocess import alpha_io, video_io


def to_uint8_image(model_image) -> np.ndarray:
    """A [3, H, W] tensor in [-1, 1] -> uint8 [H, W, 3]."""
    return model_video_to_frames(model_image[:, None])[0].numpy()  # as a one-frame video [3, 1, H, W]


def segment_hooks_for(request, loaded, inner: SegmentHooks | None = None) -> SegmentHooks | None:
    """`inner` hooks (checkpoints), behind a per-segment QA gate when `request.qa_retry` asks for retries."""
    if request.qa_retry > 0:
        return qa.SegmentQaGate(loaded.inputs.driving_masks.numpy(), request.qa_retry, inner)
    return inner


def qa_inputs(request, loaded, result, out: Path) -> qa.QaInputs:
    info = video_io.probe_video(out)
    inputs = loaded.inputs
    return qa.QaInputs(
        output=result.frames.numpy(),
        driving=inputs.driving.numpy(),
        driving_masks=inputs.driving_masks.numpy(),
        reference=to_uint8_image(inputs.reference),
        reference_mask=to_uint8_image(inputs.reference_mask),
        segments=result.segments,
        mode=inputs.mode,
        output_fps=info.fps,
        driving_fps=loaded.fps,
        output_audio=info.has_audio,
        driving_audio=loaded.has_audio,
    )


def finish_outputs(request, loaded, result, out: Path, hooks: SegmentHooks | None = None) -> dict:
    """The QA block (report files beside `out`) and, with `request.alpha`, the alpha outputs: manifest fields."""
    fields: dict = {}
    if not (request.qa or request.alpha):
        return fields
    checks = qa_inputs(request, loaded, result, out)
    checks.output_masks = qa.output_character_masks(checks.output, checks.mode)
    if request.qa:
        report = qa.qa_video(checks)
        if isinstance(hooks, qa.SegmentQaGate):
            report["rejected_segments"] = hooks.rejected
        report["files"] = qa.write_qa_report(report, checks, out.with_suffix(""))
        fields["qa"] = report
    if request.alpha:
        masks = checks.output_masks
        source = "output"
        if not masks.any():  # nothing moved in the output: the driving masks are the best estimate
            masks, source = qa.character_map(checks.driving_masks)[: len(checks.output)], "driving masks"
        fields["alpha"] = {"source": source, **alpha_io.write_alpha_outputs(out, checks.output, masks, loaded.fps)}
    return fields
