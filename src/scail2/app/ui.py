"""The Gradio layout of `scail2 app`: a thin wiring of `scail2.app.workflow`, one column of steps.

Upload -> masks (preview; accept, redo with other settings, or replace by uploaded masks) -> settings and plan ->
run (progress, cancel) -> result video, manifest to download. Every handler returns a status line; errors a person
can fix show as that line, never as a traceback.
"""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from scail2.app import workflow
from scail2.errors import Scail2Error
from scail2.optional import require

PRESETS = ["model default", "quality", "fast", "distill"]


@dataclass
class Session:
    workdir: Path
    ref: Path | None = None
    driving: Path | None = None
    frames: int = 0
    masks: workflow.MaskPreview | None = None
    accepted: bool = False
    job: workflow.RunJob | None = None
    runs: int = 0


@dataclass
class AppConfig:
    model: str | None = None  # None: the bundled demo model
    limits: workflow.UploadLimits = field(default_factory=workflow.UploadLimits)
    root: Path | None = None  # where sessions keep their files (default: the system's temporary folder)
    max_frames: int | None = None  # cap on the driving frames a run uses


def _path(upload) -> Path | None:
    if upload is None:
        return None
    return Path(upload if isinstance(upload, str) else getattr(upload, "name", upload))


class App:
    """The handlers, each a small method over `workflow`; `build()` lays them out."""

    def __init__(self, config: AppConfig):
        self.config = config
        self.sessions: dict[str, Session] = {}

    def session(self, key: str | None) -> tuple[str, Session]:
        if not key or key not in self.sessions:
            key = uuid.uuid4().hex
            root = self.config.root
            if root is not None:
                root.mkdir(parents=True, exist_ok=True)
            self.sessions[key] = Session(Path(tempfile.mkdtemp(prefix="scail2-app-", dir=root)))
        return key, self.sessions[key]

    # 1. uploads ------------------------------------------------------------------------------------------
    def upload(self, key, ref, driving):
        key, session = self.session(key)
        session.ref, session.driving, session.masks, session.accepted = None, None, None, False
        try:
            if ref is not None:
                workflow.check_image_upload(_path(ref), self.config.limits)
                session.ref = _path(ref)
            if driving is not None:
                info = workflow.check_video_upload(_path(driving), self.config.limits)
                session.driving, session.frames = _path(driving), info.declared_frames
        except Scail2Error as error:
            return key, f"**Refused:** {error}"
        missing = [n for n, v in (("reference image", session.ref), ("driving video", session.driving)) if v is None]
        if missing:
            return key, "Upload the " + " and the ".join(missing) + "."
        return key, f"Inputs accepted ({session.frames} driving frames). Make the masks next."

    # 2. masks --------------------------------------------------------------------------------------------
    def make_masks(self, key, characters, dilate, work_size):
        key, session = self.session(key)
        if session.ref is None or session.driving is None:
            return key, None, None, "Upload a reference image and a driving video first."
        options = workflow.MaskOptions(int(characters), int(work_size), int(dilate))
        try:
            session.masks = workflow.make_masks(
                session.workdir, session.driving, session.ref, options, self.config.max_frames
            )
        except Scail2Error as error:
            return key, None, None, f"**No masks:** {error}. Try other settings or upload your own masks."
        session.accepted = False
        return key, *self._mask_outputs(session)

    def take_masks(self, key, driving_mask, ref_mask):
        key, session = self.session(key)
        if session.ref is None or session.driving is None or driving_mask is None:
            return key, None, None, "Upload the inputs and a driving mask video or PNG file first."
        try:
            session.masks = workflow.take_masks(
                session.workdir, session.driving, session.ref, _path(driving_mask), _path(ref_mask)
            )
        except Scail2Error as error:
            return key, None, None, f"**Masks refused:** {error}"
        session.accepted = False
        return key, *self._mask_outputs(session)

    @staticmethod
    def _mask_outputs(session: Session):
        meta = session.masks.meta
        names = ", ".join(entry["name"] for entry in meta["identities"])
        video = str(session.masks.preview_video) if session.masks.preview_video else None
        status = f"Masks by {meta['method']}: {len(meta['identities'])} character(s) ({names}). Accept or redo."
        return video, session.masks.identities, status

    def accept(self, key):
        key, session = self.session(key)
        if session.masks is None:
            return key, "Make or upload masks first."
        session.accepted = True
        return key, "Masks accepted. Choose the settings and look at the plan."

    # 3. plan ---------------------------------------------------------------------------------------------
    def _request(self, session: Session, mode, preset, seed, height, width):
        choices = workflow.RunChoices(
            mode=mode,
            preset=None if preset == PRESETS[0] else preset,
            seed=int(seed),
            height=int(height) if height else None,
            width=int(width) if width else None,
            max_frames=self.config.max_frames,
        )
        session.runs += 1
        out = session.workdir / f"run{session.runs:03d}" / "output.mp4"
        return workflow.model_request(
            self.config.model, session.ref, session.driving, session.masks.folder, out, choices
        )

    def plan(self, key, mode, preset, seed, height, width):
        key, session = self.session(key)
        if not session.accepted:
            return key, "Accept the masks first."
        try:
            request = self._request(session, mode, preset, seed, height, width)
            return key, workflow.plan_run(request, session.frames).describe()
        except Scail2Error as error:
            return key, f"**Cannot plan:** {error}"

    # 4. run ----------------------------------------------------------------------------------------------
    def run(self, key, mode, preset, seed, height, width):
        key, session = self.session(key)
        if not session.accepted:
            yield key, "Accept the masks first.", None, None, ""
            return
        try:
            request = self._request(session, mode, preset, seed, height, width)
            plan = workflow.plan_run(request, session.frames)
        except Scail2Error as error:
            yield key, f"**Cannot run:** {error}", None, None, ""
            return
        session.job = job = workflow.RunJob(request, plan).start()
        while not job.wait(0.25):
            yield key, f"Running `{job.progress.bar()}` {job.progress.describe()}", None, None, ""
        if job.error is not None:
            message = str(job.error) if isinstance(job.error, Scail2Error) else repr(job.error)
            yield key, f"**Stopped:** {message}", None, None, ""
            return
        files = [str(path) for path in job.files]
        yield key, f"Done: {job.progress.describe()}.", files[0], files, job.manifest_text()

    def cancel(self, key):
        key, session = self.session(key)
        if session.job is None or session.job.done:
            return key, "Nothing is running."
        session.job.cancel()
        session.job.wait(60)
        return key, "Cancelled; nothing was written."

    # layout ----------------------------------------------------------------------------------------------
    def build(self):
        gr = require("gradio", purpose="the web app")
        # analytics off: otherwise every Blocks starts a thread that asks Gradio's server for its latest version
        with gr.Blocks(title="scail2", analytics_enabled=False) as blocks:
            key = gr.State(None)
            gr.Markdown("# scail2: animate a character with a driving video")
            with gr.Row():
                ref = gr.File(label="1. Reference image", file_types=["image"], elem_id="ref_upload")
                driving = gr.File(label="1. Driving video", file_types=["video"], elem_id="driving_upload")
            upload_status = gr.Markdown("Upload a reference image and a driving video.", elem_id="upload_status")
            with gr.Row():
                characters = gr.Slider(1, 6, value=1, step=1, label="characters")
                dilate = gr.Slider(0, 8, value=0, step=1, label="grow masks (px)")
                work_size = gr.Slider(160, 640, value=320, step=32, label="working resolution")
            with gr.Row():
                make = gr.Button("2. Make masks", elem_id="make_masks")
                accept = gr.Button("Accept masks", elem_id="accept_masks")
            with gr.Accordion("... or upload your own masks", open=False):
                driving_mask = gr.File(label="driving masks (video, binary or palette)", elem_id="driving_mask")
                ref_mask = gr.File(label="reference mask (optional)", elem_id="ref_mask")
                take = gr.Button("Use these masks", elem_id="take_masks")
            mask_status = gr.Markdown(elem_id="mask_status")
            with gr.Row():
                preview = gr.Video(label="mask preview", elem_id="mask_preview")
                identities = gr.Image(label="identities: reference | driving", elem_id="identities")
            with gr.Row():
                mode = gr.Radio(["animate", "replace"], value="animate", label="mode")
                preset = gr.Dropdown(PRESETS, value=PRESETS[0], label="preset")
                seed = gr.Number(0, precision=0, label="seed")
                height = gr.Number(0, precision=0, label="height (0: model default)")
                width = gr.Number(0, precision=0, label="width (0: model default)")
            plan_button = gr.Button("3. Plan", elem_id="plan")
            plan_text = gr.Markdown(elem_id="plan_text")
            with gr.Row():
                run = gr.Button("4. Run", variant="primary", elem_id="run")
                cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
            run_status = gr.Markdown(elem_id="run_status")
            result = gr.Video(label="result", elem_id="result")
            downloads = gr.File(label="video and manifest", file_count="multiple", elem_id="downloads")
            manifest = gr.Code(label="manifest", language="json", elem_id="manifest")

            for upload in (ref, driving):
                upload.change(self.upload, [key, ref, driving], [key, upload_status])
            make.click(self.make_masks, [key, characters, dilate, work_size], [key, preview, identities, mask_status])
            take.click(self.take_masks, [key, driving_mask, ref_mask], [key, preview, identities, mask_status])
            accept.click(self.accept, [key], [key, mask_status])
            settings = [key, mode, preset, seed, height, width]
            plan_button.click(self.plan, settings, [key, plan_text])
            run.click(self.run, settings, [key, run_status, result, downloads, manifest])
            cancel.click(self.cancel, [key], [key, run_status])
        return blocks


def launch(config: AppConfig, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Build and serve the app; returns the Blocks (serving in the background when `block` is False)."""
    blocks = App(config).build()
    allowed = [str(config.root)] if config.root else None
    blocks.queue().launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        max_file_size=config.limits.max_bytes,
        allowed_paths=allowed,
        show_error=True,
    )
    return blocks
