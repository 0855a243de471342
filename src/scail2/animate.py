"""Generation from files: what `scail2 animate` (and any other client) calls.

    request = AnimateRequest(ref="ref.png", driving="dance.mp4", driving_mask="masks/", out="out.mp4",
                             model="converted/scail2")
    manifest = run_animate(request)

Steps: load the model folder, read and resize the inputs, bind identity colours, generate, then write the
MP4 (driving frame rate, audio copied), optional PNG frames and a JSON manifest beside the video. Every output
is written under a temporary name and renamed when complete. Without `model` the bundled demo model is used
(`scail2.bundled`), at its native size unless a size is given; `sampling_settings` picks its sampler defaults.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import torch

from scail2 import __version__, bundled
from scail2.conditioning import AnimationInputs
from scail2.data.format import atomic_write_bytes, read_json
from scail2.errors import Scail2Error
from scail2.models import step_cache
from scail2.models.quantize import pipeline_components
from scail2.modes import parse_mode
from scail2.pipelines.drift import DriftSettings
from scail2.pipelines.memory import MemorySettings
from scail2.pipelines.memory_plan import JobShape, RunOptions, check_fits
from scail2.pipelines.pipeline_scail2 import SAMPLING_PRESETS, SamplingSettings, SCAIL2Pipeline
from scail2.preprocess import mask_folder, video_io
from scail2.preprocess import masks as mask_ops
from scail2.preprocess.mask_checks import check_user_mask
from scail2.preprocess.resize import choose_target_size, frame_resizer, image_to_model
from scail2.preprocess.segmentation import automatic as auto_masks

MASK_HELP = (
    "pass --ref-mask IMG (binary or palette colours), give an RGBA reference whose alpha marks the "
    "character, or make masks with a segmentation tool"
)


@dataclass
class AnimateRequest:
    """Everything one generation needs; paths are the user's files."""

    ref: str | Path
    driving: str | Path
    out: str | Path
    model: str | Path | None = None
    driving_mask: str | Path | None = None
    ref_mask: str | Path | None = None
    prompt: str = ""
    negative_prompt: str = ""
    mode: str = "animate"
    height: int | None = None
    width: int | None = None
    max_frames: int | None = None
    settings: SamplingSettings = field(default_factory=SamplingSettings)
    memory: MemorySettings = field(default_factory=MemorySettings)
    seed: int = 0
    loras: list[str] = field(default_factory=list)
    lora_mode: str = "fused"
    device: str | None = None
    dtype: str = "auto"
    attention: str | None = None
    compile: bool = False
    quantize: str | None = None
    cache: str = "none"  # step cache (scail2.models.step_cache): "none" or "fbc[:THRESHOLD]"
    frames_dir: str | Path | None = None
    extra_refs: list[str | Path] = field(default_factory=list)
    memory_check: bool = True  # refuse, before loading, a job the GPU cannot hold (`scail2 plan`)
    shard_weights: bool = False  # under torchrun: the transformer's weights split over the ranks (FSDP2)
    handoff: str = "pixel"  # how segments hand history over (scail2.pipelines.drift)
    color_anchor: float = 0.0  # bound of the colour anchoring to the reference (0: off)
    qa: bool = True  # write the QA report (scail2.eval.qa) and its manifest block
    qa_retry: int = 0  # draws of a segment the per-segment QA rejects
    alpha: bool = False  # masks, RGBA PNGs and a ProRes 4444 MOV of the output (scail2.preprocess.alpha_io)
    cues: str | Path | None = None  # DirectAnimator models: a `scail2 cues` folder of the driving video
    face_detector: str = "mask"  # DirectAnimator models: head boxes of cues made here (`--face-detector`)

    def __post_init__(self) -> None:
        self.mode = parse_mode(self.mode, "--mode")  # before any file is read or model loaded
        DriftSettings(self.handoff, self.color_anchor)  # checked before any file is read
        if self.qa_retry < 0:
            raise Scail2Error(f"--qa-retry must be 0 or more, got {self.qa_retry}")

    @property
    def drift(self) -> DriftSettings:
        return DriftSettings(self.handoff, self.color_anchor)


@dataclass
class LoadedInputs:
    inputs: AnimationInputs
    fps: Fraction
    has_audio: bool
    size: tuple[int, int]
    timing: dict | None = None  # the driving video's, when its frame rate varies


# ------------------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------------------


def resolve_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --dtype: the dtype the transformer and the encoders are loaded in (auto: bf16 on a GPU, fp32 on CPU).
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# safetensors dtype names of the floating dtypes a VAE folder may store.
STORED_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def weights_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The dtype `--dtype` loads the transformer and the encoders in: bf16 on an accelerator and fp32 on CPU for
    `auto`. The transformer's declared fp32 modules stay fp32 whatever is chosen."""
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if dtype not in DTYPES:
        raise Scail2Error(f"--dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def stored_dtype(component: Path) -> torch.dtype | None:
    """The floating dtype most of a component folder's safetensors tensors are stored in (None: none found)."""
    from safetensors import safe_open

    counts: dict[str, int] = {}
    for path in component.glob("*.safetensors"):
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():
                name = handle.get_slice(key).get_dtype()
                counts[name] = counts.get(name, 0) + 1
    floating = [name for name in sorted(counts, key=counts.get, reverse=True) if name in STORED_DTYPES]
    return STORED_DTYPES[floating[0]] if floating else None


def vae_dtype(component: Path, device: torch.device, weights: torch.dtype) -> torch.dtype:
    """The VAE's dtype: fp32 on CPU (bf16 convolutions are fast only on CPUs with bf16 instructions, and the
    demo must reproduce exactly) and when the other weights are fp32; otherwise the dtype the folder stores
    (fp32 for the converted Wan VAE), except fp16, a size choice of small exported VAEs whose activations
    could overflow it."""
    stored = stored_dtype(component)
    if device.type == "cpu" or weights == torch.float32 or stored in (None, torch.float16):
        return torch.float32
    return stored


def autocast_dtype(dtype: str, device: torch.device, transformer: torch.nn.Module) -> torch.dtype | None:
    """The autocast that gives a transformer the precision `--dtype` asks for: none when its weights are already
    stored in it (a folder loaded by `load_pipeline`, so no weight is copied per step); bf16 for fp32 weights
    of a pipeline the caller loaded, when bf16 is asked for."""
    wanted = weights_dtype(dtype, device)
    return torch.bfloat16 if wanted == torch.bfloat16 and transformer.dtype == torch.float32 else None


def check_model_folder(model_dir: str | Path) -> Path:
    """The folder must be a converted SCAIL-2 pipeline: model_index.json plus each listed component."""
    folder = Path(model_dir)
    index = folder / "model_index.json"
    if not index.is_file():
        raise Scail2Error(
            f"{folder}: no model_index.json; pass a folder written by `scail2 convert all` or "
            "`SCAIL2Pipeline.save_pretrained`"
        )
    components = read_json(index, missing_hint="", corrupt_hint="re-run the conversion that wrote the folder")
    for name, value in components.items():
        if name.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        part = folder / name
        configs = list(part.glob("*.json")) if part.is_dir() else []
        weights = (
            [p for p in part.glob("*") if p.suffix in (".safetensors", ".bin", ".model", ".json")]
            if part.is_dir()
            else []
        )
        if not configs or not weights:
            raise Scail2Error(
                f"{part}: missing or empty (model_index.json lists `{name}`); re-run the conversion "
                "or copy the whole model folder"
            )
    return folder


def load_pipeline(
    model_dir: str | Path,
    device: torch.device,
    loras: list[str] = (),
    dtype: str = "auto",
    attention: str | None = None,
    compile: bool = False,
    quantize: str | None = None,
    memory: MemorySettings | None = None,
    lora_mode: str = "fused",
    transformer: torch.nn.Module | None = None,
) -> SCAIL2Pipeline:
    """A model folder as a pipeline on `device`: the transformer and the encoders loaded in `dtype` (see
    `weights_dtype`), the VAE in `vae_dtype`; LoRAs fused, or with `lora_mode="unfused"` applied beside the
    weights (`scail2.models.lora_unfused`); the attention kernel set (`attention`, see
    `scail2.models.attention.set_attention`); and with `compile`, each transformer block compiled
    (diffusers' regional compilation: one compiled block serves all 40); with `quantize` ("fp8") the
    transformer's block linears are quantised while they load (`scail2.models.quantize`); the components are
    placed by `memory` (`SCAIL2Pipeline.enable_memory_settings`: by default all on `device` but the encoders,
    which come onto it only while they encode). A `transformer` given (loaded sharded, `--shard-weights`) is used
    instead of the folder's, with its LoRAs already fused."""
    import diffusers
    import transformers

    from scail2.models.attention import check_attention, set_attention
    from scail2.pipelines.pipeline_directanimator import pipeline_class_for

    folder = check_model_folder(model_dir)
    check_attention(attention, device)  # before 33 GB of weights load
    # per-component loading bars would bury the one progress bar (denoising) and one-line errors
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    weights = weights_dtype(dtype, device)
    dtypes = {"default": weights, "vae": vae_dtype(folder / "vae", device, weights)}
    try:
        components = pipeline_components(folder, quantize, weights) if transformer is None else {}
        components.update({"transformer": transformer} if transformer is not None else {})
        pipeline_class = pipeline_class_for(read_json(folder / "model_index.json", missing_hint="", corrupt_hint=""))
        pipeline = pipeline_class.from_pretrained(str(folder), dtype=dtypes, **components)
    except (OSError, ValueError) as error:
        raise Scail2Error(f"{folder}: cannot be loaded ({str(error).splitlines()[0]}); re-run the conversion") from None
    latent_channels, transformer_channels = pipeline.vae.config.z_dim, pipeline.transformer.latent_channels
    if latent_channels != transformer_channels:
        raise Scail2Error(
            f"{folder}: the VAE has {latent_channels} latent channels but the transformer expects "
            f"{transformer_channels}; put the VAE the transformer was trained with in {folder / 'vae'}"
        )
    if loras:
        from scail2.models.lora import LORA_MODES, apply_loras, parse_lora_arg

        if lora_mode not in LORA_MODES:
            raise Scail2Error(f"--lora-mode {lora_mode!r} is not one of {', '.join(LORA_MODES)}")
        apply_loras(pipeline.transformer, [parse_lora_arg(spec) for spec in loras], fuse=lora_mode == "fused")
    pipeline.set_progress_bar_config(disable=True)
    pipeline.enable_memory_settings(memory or MemorySettings(), device)
    set_attention(pipeline.transformer, attention, device)
    if compile:
        pipeline.transformer.compile_repeated_blocks(fullgraph=True)
    return pipeline


def load_sharded(request: AnimateRequest, device: torch.device, layout) -> torch.nn.Module:
    """`--shard-weights` under torchrun: the transformer built empty and sharded over the ranks, each reading only
    its share of the weights (`scail2.parallel.sharded_load`), so no process holds the whole model."""
    from scail2.parallel.sharded_load import load_sharded_transformer

    with layout.failures_shared():
        return load_sharded_transformer(
            check_model_folder(request.model) / "transformer",
            device,
            weights_dtype(request.dtype, device),
            loras=request.loras,
            lora_mode=request.lora_mode,
            quantize=request.quantize,
        )


def with_bundled_model(request: AnimateRequest) -> AnimateRequest:
    """The request on the bundled demo model, at its native size unless --height/--width were given."""
    height, width = request.height, request.width
    if height is None and width is None:
        height, width = bundled.BUNDLED_SIZE
    return dataclasses.replace(request, model=bundled.bundled_model_dir(), height=height, width=width)


def sampling_settings(preset: str | None, use_bundled: bool, **overrides) -> SamplingSettings:
    """The named sampler preset, or when none is named `quality` (the bundled model's own settings when it is
    used); every override that is not None replaces one field (an explicit user flag always wins)."""
    if preset is None:
        base = bundled.BUNDLED_SAMPLING if use_bundled else SAMPLING_PRESETS["quality"]
    elif preset in SAMPLING_PRESETS:
        base = SAMPLING_PRESETS[preset]
    else:
        raise Scail2Error(f"--preset {preset!r} is not one of {', '.join(SAMPLING_PRESETS)}")
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def model_fingerprint(model_dir: str | Path) -> str:
    """A cheap content fingerprint: every file's path, size and first MiB (safetensors headers, configs)."""
    digest = hashlib.sha256()
    root = Path(model_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(str(path.stat().st_size).encode())
        with path.open("rb") as handle:
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------------------


def _reference_mask(
    request: AnimateRequest,
    image: video_io.LoadedImage,
    target: tuple[int, int],
    driving_masks: torch.Tensor | None = None,
):
    """The reference mask as palette uint8 at the image's size (for identity checks) and as model input."""
    if request.ref_mask is not None:
        mask_image = video_io.read_image(request.ref_mask)
        if mask_image.rgb.shape[:2] != image.rgb.shape[:2]:
            h, w = image.rgb.shape[:2]
            mh, mw = mask_image.rgb.shape[:2]
            raise Scail2Error(
                f"{request.ref_mask}: is {mw}x{mh} but the reference image is {w}x{h}; give the "
                "reference mask the reference image's size"
            )
        check_user_mask(mask_image.rgb, f"--ref-mask {request.ref_mask}")
        palette = mask_ops.normalize_user_mask(mask_image.rgb, request.mode, "reference")
    elif image.alpha is not None and (
        driving_masks is None or len(mask_ops.identity_colors_present(driving_masks)) <= 1
    ):
        palette = mask_ops.mask_from_alpha(image.alpha, request.mode)
    else:
        try:  # the mask folder's own reference mask, or alpha / still-image segmentation coloured like the driving
            palette = auto_masks.reference_palette(
                request.ref, image.rgb, driving_masks, request.mode, request.driving_mask, alpha=image.alpha
            )
        except Scail2Error as error:
            raise Scail2Error(f"{request.ref}: no reference mask ({error}): {MASK_HELP}") from None
    return palette, image_to_model(palette.numpy(), target)


def _driving_masks(
    request: AnimateRequest, num_frames: int, target: tuple[int, int], driving: torch.Tensor | None = None
) -> torch.Tensor:
    if request.driving_mask is None:
        try:  # no masks given: the weight-free method (fixed-camera footage with moving characters)
            return auto_masks.automatic_driving_palette(driving, request.mode)
        except Scail2Error as error:
            raise Scail2Error(
                f"{request.driving}: no driving masks ({error}): pass --driving-mask (a `scail2 masks` "
                "folder, a mask video or a folder of PNG frames, binary or palette colours, one frame "
                "per driving frame)"
            ) from None
    if mask_folder.is_mask_folder(request.driving_mask):
        frames = auto_masks.folder_driving_palette(
            request.driving_mask, request.mode, num_frames, frame_resizer(target)
        )
    else:
        frames = video_io.read_mask_frames(
            request.driving_mask, max_frames=num_frames, frame_transform=frame_resizer(target)
        )
    if frames.shape[0] < num_frames:
        raise Scail2Error(
            f"{request.driving_mask}: has {frames.shape[0]} mask frames but the driving video has "
            f"{num_frames}; give one mask frame per driving frame"
        )
    check_user_mask(frames, f"--driving-mask {request.driving_mask}")
    return mask_ops.normalize_user_mask(frames, request.mode, "driving")


@dataclass
class LoadedDriving:
    """The driving side of a request at the target size: what a batch caches per driving video."""

    frames: torch.Tensor  # uint8 [T, H, W, 3]
    masks: torch.Tensor  # uint8 palette [T, H, W, 3]
    fps: Fraction
    has_audio: bool
    timing: dict | None = None  # a variable-frame-rate driving video's frame timing (video_io.variable_rate)


def target_size(request: AnimateRequest) -> tuple[int, int]:
    """The generation size (H, W) of a request, from the reference image's size and --height/--width."""
    return choose_target_size(video_io.read_image(request.ref).rgb.shape[:2], request.height, request.width)


def load_driving(request: AnimateRequest, target: tuple[int, int]) -> LoadedDriving:
    """Read and resize the driving video and its masks (automatic ones when none are given)."""
    video = video_io.read_video(request.driving, max_frames=request.max_frames, frame_transform=frame_resizer(target))
    masks = _driving_masks(request, video.frames.shape[0], target, video.frames)
    return LoadedDriving(
        frames=video.frames, masks=masks, fps=video.fps, has_audio=video.has_audio, timing=video.frame_timing
    )


def load_inputs(request: AnimateRequest, driving: LoadedDriving | None = None) -> LoadedInputs:
    """Read, resize and check every input file of a request (the driving side from `driving` when given)."""
    image = video_io.read_image(request.ref)
    target = choose_target_size(image.rgb.shape[:2], request.height, request.width)
    video = driving or load_driving(request, target)
    driving, driving_masks = video.frames, video.masks
    ref_palette, reference_mask = _reference_mask(request, image, target, driving_masks)
    mask_ops.check_identity_binding(
        ref_palette,
        driving_masks,
        reference_source=str(request.ref_mask or request.ref),
        driving_source=str(request.driving_mask or request.driving),
    )
    extra = []
    for path in request.extra_refs:
        view = video_io.read_image(path)
        if view.alpha is None:
            raise Scail2Error(f"{path}: an extra reference view needs an alpha channel marking the character")
        extra.append(
            (
                image_to_model(view.rgb, target),
                image_to_model(mask_ops.mask_from_alpha(view.alpha, request.mode).numpy(), target),
            )
        )
    inputs = AnimationInputs(
        reference=image_to_model(image.rgb, target),
        reference_mask=reference_mask,
        driving=driving,
        driving_masks=driving_masks,
        mode=request.mode,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        extra_references=extra,
    )
    return LoadedInputs(inputs=inputs, fps=video.fps, has_audio=video.has_audio, size=target, timing=video.timing)


# ------------------------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------------------------


def planned_options(request: AnimateRequest, device: torch.device) -> RunOptions:
    """The request's memory-relevant flags as the memory plan's options; `--cfg-mode auto` counts as sequential,
    since auto turns sequential when memory is short."""
    memory = request.memory
    return RunOptions(
        dtype="fp32" if weights_dtype(request.dtype, device) == torch.float32 else "bf16",
        quantize=request.quantize or "none",
        offload=memory.offload,
        cfg_mode="sequential" if memory.cfg_mode == "auto" else memory.cfg_mode,
        vae_tiling=memory.vae_tiling,
        encoders="cpu" if memory.encoders_on_cpu else "offload",
    )


def check_memory(request: AnimateRequest, device: torch.device, layout=None) -> None:
    """Predict the job's GPU memory from the model folder's configs and refuse it, before loading anything, with
    one line naming the options that would make it fit (`scail2 plan` prints the whole plan); per GPU of the
    ranks under a `layout` (`scail2 plan --gpus`)."""
    height, width = choose_target_size(video_io.read_image(request.ref).rgb.shape[:2], request.height, request.width)
    frames = video_io.probe_video(request.driving).declared_frames or request.settings.segment_length
    frames = min(frames, request.max_frames or frames)
    settings = request.settings
    if layout is not None:
        from scail2.parallel.scaling import check_parallel_fits

        guided, extra = settings.guidance_scale > 1, len(request.extra_refs)
        job = JobShape(height, width, frames, settings.segment_length, settings.overlap, extra, guided)
        check_parallel_fits(request.model, job, planned_options(request, device), layout.world, request.shard_weights)
        return
    check_fits(
        request.model,
        height,
        width,
        frames,
        planned_options(request, device),
        segment_length=settings.segment_length,
        overlap=settings.overlap,
        extra_refs=len(request.extra_refs),
        guided=settings.guidance_scale > 1,
    )


def check_host_memory(request: AnimateRequest, device: torch.device) -> None:
    """On the CPU every weight, activation and frame lives in host RAM: refuse, before loading, a job whose
    predicted size (frames x size, weights, the largest phase) exceeds the RAM available now."""
    from scail2.pipelines import memory_plan

    available = memory_plan.detected_host_bytes()
    if available is None:
        return
    height, width = choose_target_size(video_io.read_image(request.ref).rgb.shape[:2], request.height, request.width)
    frames = video_io.probe_video(request.driving).declared_frames or request.settings.segment_length
    frames = min(frames, request.max_frames or frames)
    settings = request.settings
    guided = settings.guidance_scale > 1
    job = JobShape(height, width, frames, settings.segment_length, settings.overlap, len(request.extra_refs), guided)
    try:
        plan = memory_plan.predict(request.model, job, planned_options(request, device))
    except Scail2Error:
        return  # an unreadable model folder gets the loader's own error
    need = max(plan.host, plan.peak) - memory_plan.PROCESS_HOST_BYTES  # this process is running already
    if need > available:
        raise Scail2Error(
            f"--driving {request.driving}: {frames} frames at {width}x{height} need about {need / 2**30:.1f} GiB "
            f"of RAM on the CPU but {available / 2**30:.1f} GiB are available; use --max-frames, a smaller "
            "--height/--width, or a GPU (--no-memory-check skips this check)"
        )


def cue_arguments(request: AnimateRequest, pipeline: SCAIL2Pipeline, loaded: LoadedInputs) -> dict:
    """`cues=` for a DirectAnimator pipeline given `--cues DIR` (the folder read, checked and sized) or a face
    detector (the cues made here with its head boxes); else none."""
    from scail2.pipelines.pipeline_directanimator import DirectAnimatorPipeline, read_cues_for

    if request.face_detector != "mask":
        flag = f"--face-detector {request.face_detector}"
        if request.cues is not None:
            raise Scail2Error(f"{flag}: the --cues folder has its head boxes; make it with `scail2 cues {flag}`")
        if not isinstance(pipeline, DirectAnimatorPipeline):
            raise Scail2Error(f"{flag}: this model takes no driving cues; use a DirectAnimator model")
        return {"cues": pipeline.extract_driving_cues(loaded.inputs, request.face_detector)}
    if request.cues is None:
        return {}
    if not isinstance(pipeline, DirectAnimatorPipeline):
        raise Scail2Error(f"--cues {request.cues}: this model takes no driving cues; use a DirectAnimator model")
    return {"cues": read_cues_for(pipeline, request.cues, loaded.size, loaded.inputs.driving.shape[0])}


def run_animate(
    request: AnimateRequest,
    pipeline: SCAIL2Pipeline | None = None,
    *,
    layout=None,
    loaded: LoadedInputs | None = None,
    segment_hooks=None,
    call_kwargs: dict | None = None,
    step_callback=None,
) -> dict | None:
    """Generate one video from files; returns the manifest (also written beside the video).

    `loaded` replaces reading the inputs (a batch's cached driving work); `segment_hooks` resume and keep
    segments (checkpoints); `call_kwargs` go to the pipeline call (cached `segment_conditions`, embeddings).
    Under torchrun, `layout` (`scail2.parallel.ParallelLayout`) spreads the generation over the ranks; every
    rank reads the inputs itself and only rank 0 writes (the other ranks return None). `step_callback` is the
    pipeline's `callback_on_step_end` (progress; an exception from it stops the run before anything is
    written)."""
    start = time.perf_counter()
    out = Path(request.out)
    if out.suffix.lower() != ".mp4":
        raise Scail2Error(f"{out}: the output must be an .mp4 file")
    device = resolve_device(request.device) if layout is None else layout.device
    if step_cache.parse_step_cache(request.cache) and request.compile:  # a bad --cache fails before loading too
        raise Scail2Error(
            f"--cache {request.cache} cannot be combined with --compile: the cache decides in Python whether to "
            "skip blocks, which the full-graph compile refuses; drop one of them"
        )
    use_bundled = pipeline is None and request.model is None
    if pipeline is None:
        request = with_bundled_model(request) if use_bundled else request
        if request.memory_check and device.type == "cuda":
            check_memory(request, device, layout)
        elif request.memory_check and device.type == "cpu":
            check_host_memory(request, device)
        sharded = load_sharded(request, device, layout) if request.shard_weights and layout else None
        pipeline = load_pipeline(
            request.model,
            device,
            () if sharded is not None else request.loras,  # (fused into the shards)
            request.dtype,
            request.attention,
            request.compile,
            quantize=request.quantize,
            memory=request.memory,
            lora_mode=request.lora_mode,
            transformer=sharded,
        )
    if pipeline.text_encoder is None and request.settings.guidance_scale != 1:  # no text: guidance cannot apply
        request = dataclasses.replace(request, settings=dataclasses.replace(request.settings, guidance_scale=1.0))
    if layout is not None:
        if type(pipeline) is not SCAIL2Pipeline:
            raise Scail2Error(
                f"--model {request.model}: a {type(pipeline).__name__} runs in one process; start it without torchrun"
            )
        layout.apply(pipeline, guided=request.settings.guidance_scale > 1, shard_weights=request.shard_weights)
    from scail2.finish import finish_outputs, segment_hooks_for

    loaded = loaded or load_inputs(request)
    hooks = segment_hooks_for(request, loaded, segment_hooks)
    with (
        step_cache.step_cache_enabled(pipeline.transformer, request.cache),
        step_cache.count_block_evaluations(pipeline.transformer) as blocks,
    ):
        result = pipeline(
            loaded.inputs,
            request.settings,
            seed=request.seed,
            autocast_dtype=autocast_dtype(request.dtype, device, pipeline.transformer),
            progress=step_callback is None and (layout is None or layout.is_main),
            callback_on_step_end=step_callback,
            drift=request.drift,
            segment_hooks=hooks,
            **(call_kwargs or {}),
            **cue_arguments(request, pipeline, loaded),
        )
    if layout is not None and not layout.is_main:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    video_io.write_mp4(out, result.frames, loaded.fps, audio_source=request.driving if loaded.has_audio else None)
    if request.frames_dir is not None:
        video_io.write_png_frames(request.frames_dir, result.frames, overwrite=True)
    manifest = {
        "scail2_version": __version__,
        "output": str(out),
        "frames": int(result.frames.shape[0]),
        "driving_frames": int(loaded.inputs.driving.shape[0]),
        "fps": str(loaded.fps),
        **({"driving_timing": loaded.timing} if loaded.timing else {}),
        "size": {"height": loaded.size[0], "width": loaded.size[1]},
        "audio": loaded.has_audio,
        "segments": [dataclasses.asdict(s) for s in result.segments],
        "request": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(request).items()},
        "model_fingerprint": model_fingerprint(request.model) if request.model else None,
        "bundled_model": use_bundled,
        "device": str(device),
        "parallel": None if layout is None else layout.describe(),
        "step_cache": {"cache": request.cache, **blocks.as_dict()},
        **finish_outputs(request, loaded, result, out, hooks),
        "timings_s": {**result.timings, "wall_s": time.perf_counter() - start},
    }
    write_manifest(out, manifest)
    return manifest


def write_manifest(out: str | Path, manifest: dict) -> Path:
    """The manifest beside the video `out` (OUT.json), atomically."""
    # settings in the order they were given (paths as strings), not the sorted keys of the data formats
    text = json.dumps(manifest, indent=2, default=str) + "\n"
    return atomic_write_bytes(Path(out).with_suffix(".json"), text.encode())
