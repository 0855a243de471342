"""The web app's steps as plain functions: check uploads, make or take masks, plan, run with progress and cancel.

The Gradio layout (`scail2.app.ui`) only wires these together, so every step is tested without a browser.
Each session works in its own folder; a run writes its video and manifest there atomically (the pipeline
writes nothing until the last step is done), so a cancelled run leaves no file behind.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from scail2 import bundled
from scail2.animate import AnimateRequest, run_animate, sampling_settings
from scail2.errors import Scail2Error
from scail2.pipelines.memory_plan import JobShape, predict
from scail2.pipelines.pipeline_scail2 import SCAIL2Pipeline
from scail2.preprocess import mask_folder, video_io
from scail2.preprocess.palette import IDENTITY_COLORS
from scail2.preprocess.resize import choose_target_size
from scail2.preprocess.segmentation.extract import MaskSettings
from scail2.preprocess.segmentation.pipeline import MasksRequest, build_mask_folder, overlay
from scail2.preprocess.segmentation.refine import Refinement

MIB = 1 << 20

# ------------------------------------------------------------------------------------------------------------
# 1. Uploads
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadLimits:
    """What the app accepts, checked before any work (`scail2 app --max-upload-mb/--max-seconds/--max-side`)."""

    max_bytes: int = 200 * MIB
    max_seconds: float = 120.0
    max_side: int = 3840  # longer side of a video or image, pixels

    def check_size(self, path: Path, what: str) -> None:
        size = path.stat().st_size
        if size > self.max_bytes:
            raise Scail2Error(
                f"{what} {path.name} is {size / MIB:.1f} MiB, over the {self.max_bytes / MIB:.0f} MiB limit; "
                "upload a shorter or more compressed file"
            )

    def check_sides(self, width: int, height: int, what: str, name: str) -> None:
        if max(width, height) > self.max_side:
            raise Scail2Error(
                f"{what} {name} is {width}x{height}, over the {self.max_side}-pixel limit on the longer side; "
                "upload a smaller one"
            )


def check_video_upload(path: str | Path, limits: UploadLimits) -> video_io.VideoInfo:
    """The driving video's container facts, or a one-line Scail2Error for a file over a limit (size first,
    before the file is opened)."""
    path = Path(path)
    limits.check_size(path, "the driving video")
    info = video_io.probe_video(path)
    limits.check_sides(info.width, info.height, "the driving video", path.name)
    if info.declared_frames and info.declared_frames / float(info.fps) > limits.max_seconds:
        seconds = info.declared_frames / float(info.fps)
        raise Scail2Error(
            f"the driving video {path.name} lasts {seconds:.1f} s, over the {limits.max_seconds:g} s limit; "
            "trim it first"
        )
    return info


def check_image_upload(path: str | Path, limits: UploadLimits, what: str = "the reference image") -> None:
    path = Path(path)
    limits.check_size(path, what)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except OSError:
        raise Scail2Error(f"{what} {path.name} cannot be read as an image; upload a PNG or JPEG") from None
    limits.check_sides(width, height, what, path.name)


# ------------------------------------------------------------------------------------------------------------
# 2. Masks
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskOptions:
    """The mask settings a person may redo the preview with."""

    max_characters: int = 1
    work_size: int = 320
    dilate: int = 0
    fill_holes: float = 0.0


@dataclass
class MaskPreview:
    folder: Path  # a `scail2 masks` folder (frames, meta.json, reference.png, preview.mp4)
    meta: dict
    preview_video: Path | None
    identities: np.ndarray  # uint8 [H, W, 3]: reference and driving masks side by side with the identity colours


def make_masks(
    workdir: Path, driving: str | Path, ref: str | Path, options: MaskOptions, max_frames: int | None = None
) -> MaskPreview:
    """Automatic masks (the weight-free method) of the driving video and the reference, with their previews."""
    settings = MaskSettings(
        method="motion",
        max_characters=options.max_characters,
        work_size=options.work_size,
        refinement=Refinement(fill_holes=options.fill_holes, dilate=options.dilate),
    )
    request = MasksRequest(
        driving=driving, out=workdir / "masks", ref=ref, settings=settings, preview=True, max_frames=max_frames
    )
    return _preview(request, driving, ref, max_frames)


def take_masks(
    workdir: Path, driving: str | Path, ref: str | Path, driving_mask: str | Path, ref_mask: str | Path | None
) -> MaskPreview:
    """The person's own masks (a video or PNG frames, binary or palette) instead of the automatic ones."""
    request = MasksRequest(
        driving=driving,
        out=workdir / "masks",
        ref=ref,
        driving_mask=driving_mask,
        ref_mask=ref_mask,
        settings=MaskSettings(method="provided"),
        preview=True,
    )
    return _preview(request, driving, ref, None)


def _preview(request: MasksRequest, driving, ref, max_frames) -> MaskPreview:
    request = dataclasses.replace(request, overwrite=True)
    meta = build_mask_folder(request)
    folder = Path(request.out)
    preview = folder / mask_folder.PREVIEW_FILE if meta.get("preview") else None
    return MaskPreview(folder, meta, preview, identity_sheet(folder, driving, ref))


def _first_frame_with_all(folder: mask_folder.MaskFolder, count: int) -> int:
    """The first driving frame where every identity shows (frame 0 when none shows them all)."""
    for index in range(folder.num_frames):
        if len(np.unique(folder.frame_ids(index))) - 1 >= count:
            return index
    return 0


def identity_sheet(folder_path: Path, driving: str | Path, ref: str | Path) -> np.ndarray:
    """Reference mask | driving mask, each drawn over its image in the identity colours, with a legend strip:
    the colours bind the characters of the reference to those of the driving video."""
    folder = mask_folder.open_mask_folder(folder_path)
    count = len(folder.meta["identities"])
    index = _first_frame_with_all(folder, count)
    frame = next(f for t, f in enumerate(video_io.iter_video_frames(driving, max_frames=index + 1)) if t == index)
    driving_view = overlay(frame, torch.from_numpy(folder.frame_ids(index)))
    reference_ids = folder.reference_ids()
    image = video_io.read_image(ref).rgb
    if reference_ids is None:
        reference_ids = np.zeros(image.shape[:2], np.uint8)
    reference_view = overlay(image, torch.from_numpy(reference_ids))
    height = 360
    panels = [_fit_height(reference_view, height), _fit_height(driving_view, height)]
    legend = np.zeros((24, sum(p.shape[1] for p in panels) + 8, 3), np.uint8)
    for k in range(count):
        legend[4:20, 8 + 40 * k : 8 + 40 * k + 32] = IDENTITY_COLORS[k]
    gap = np.full((height, 8, 3), 255, np.uint8)
    return np.concatenate([np.concatenate([panels[0], gap, panels[1]], axis=1), legend], axis=0)


def _fit_height(image: np.ndarray, height: int) -> np.ndarray:
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


# ------------------------------------------------------------------------------------------------------------
# 3. Plan
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunChoices:
    """What a person picks before a run."""

    mode: str = "animate"
    preset: str | None = None  # None: the model's own default (the bundled model's settings for the demo)
    seed: int = 0
    height: int | None = None  # None with width None: the model's default size
    width: int | None = None
    max_frames: int | None = None


def model_request(
    model: str | Path | None, ref, driving, masks: Path, out: Path, choices: RunChoices
) -> AnimateRequest:
    """The `scail2 animate` request of a run: the reviewed mask folder, the chosen settings, the bundled model
    (at its own size unless one is chosen) when `model` is None."""
    use_bundled = model is None
    height, width = choices.height, choices.width
    if use_bundled and height is None and width is None:
        height, width = bundled.BUNDLED_SIZE
    return AnimateRequest(
        ref=ref,
        driving=driving,
        out=out,
        model=None if use_bundled else model,  # run_animate loads the bundled model and says so in the manifest
        driving_mask=masks,
        mode=choices.mode,
        height=height,
        width=width,
        max_frames=choices.max_frames,
        settings=sampling_settings(choices.preset, use_bundled),
        seed=choices.seed,
        memory_check=False,  # the plan is shown before the run; the person decides
    )


@dataclass
class RunPlan:
    segments: int
    steps: int  # denoising steps over all segments: what the progress bar counts
    memory_table: str  # the memory plan of `scail2 plan` (GPU per phase, host RAM)

    def describe(self) -> str:
        return f"{self.segments} segment(s) x {self.steps // max(1, self.segments)} steps\n\n{self.memory_table}"


def plan_run(request: AnimateRequest, frames: int) -> RunPlan:
    """Segments, steps and the predicted memory of a run, from the model folder's configs (nothing loaded)."""
    settings = request.settings
    height, width = choose_target_size(video_io.read_image(request.ref).rgb.shape[:2], request.height, request.width)
    frames = min(frames, request.max_frames or frames)
    segments = SCAIL2Pipeline.plan_segments(frames, settings)
    job = JobShape(
        height,
        width,
        frames,
        segment_length=settings.segment_length,
        overlap=settings.overlap,
        guided=settings.guidance_scale > 1,
    )
    model = request.model or bundled.bundled_model_dir()
    return RunPlan(len(segments), len(segments) * settings.steps, predict(model, job).table())


# ------------------------------------------------------------------------------------------------------------
# 4. Run, with progress and cancel
# ------------------------------------------------------------------------------------------------------------


class Cancelled(Scail2Error):
    """The person pressed cancel; raised from the step callback, so the run stops within one step."""


@dataclass
class Progress:
    step: int = 0  # steps done over all segments
    steps: int = 1
    segments: int = 1
    steps_per_segment: int = 1

    @property
    def segment(self) -> int:
        """1-based segment now running."""
        return min(self.segments, self.step // self.steps_per_segment + 1)

    @property
    def fraction(self) -> float:
        return self.step / max(1, self.steps)

    def describe(self) -> str:
        return f"segment {self.segment}/{self.segments}, step {self.step}/{self.steps}"

    def bar(self, width: int = 24) -> str:
        """A text progress bar over all steps of all segments, e.g. `[######------] 50%`."""
        done = round(self.fraction * width)
        return f"[{'#' * done}{'-' * (width - done)}] {round(100 * self.fraction)}%"


class RunJob:
    """One generation on a worker thread: `start()`, then read `progress`, `cancel()`, `wait()`.

    The manifest and the QA report lie beside the video; `files` lists what to offer for download."""

    def __init__(self, request: AnimateRequest, plan: RunPlan):
        self.request = request
        self.progress = Progress(0, plan.steps, plan.segments, max(1, plan.steps // max(1, plan.segments)))
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scail2-app-run", daemon=True)
        self.manifest: dict | None = None
        self.error: BaseException | None = None

    def start(self) -> RunJob:
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return self.done

    def _on_step(self, pipe, step_index, timestep, tensors) -> dict:
        self.progress.step += 1
        if self._cancel.is_set():
            raise Cancelled("cancelled; nothing was written")
        return tensors

    def _run(self) -> None:
        try:
            self.manifest = run_animate(self.request, step_callback=self._on_step)
        except BaseException as error:  # noqa: BLE001 - handed to the app, which shows it
            self.error = error

    @property
    def files(self) -> list[Path]:
        """The video first, then every file the run wrote beside it under the video's name: the manifest
        (`output.json`), and whatever reports a run adds there later (a QA sheet), with no change here."""
        if self.manifest is None:
            return []
        video = Path(self.manifest["output"])
        beside = sorted(p for p in video.parent.glob(f"{video.stem}*") if p.is_file() and p != video)
        return [video, *beside]

    def manifest_text(self) -> str:
        return json.dumps(self.manifest, indent=2, default=str) if self.manifest else ""


def run_blocking(request: AnimateRequest, plan: RunPlan, on_progress: Callable[[Progress], None] | None = None):
    """Run to the end (for scripts and tests); returns the finished job (its `error` set on failure)."""
    job = RunJob(request, plan).start()
    while not job.wait(0.2):
        if on_progress is not None:
            on_progress(job.progress)
    return job
