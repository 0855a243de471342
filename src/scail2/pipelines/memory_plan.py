"""The memory plan of an animation job: GPU bytes per phase and host RAM, predicted before anything is loaded.

    predict(folder, job, options)            -> MemoryPlan (phases, peak, host RAM)
    choose_options(folder, job, budget)      -> the cheapest MemoryPlan that fits, or a one-line Scail2Error
    check_fits(model_dir, h, w, frames, ...) -> the same for `scail2 animate`, on the detected GPU

A job runs five phases in order; each holds the weights resident on the GPU plus its own activations:

    text encoder   umT5 over the prompt (and the negative prompt under guidance)
    image encoder  CLIP over the reference
    vae encode     the reference, each segment's half-resolution driving frames, the re-encoded history
    denoise        one transformer forward (batch 2 under batched guidance) and the sampler's latents
    vae decode     one segment's latent to pixels, then to uint8 frames

Which weights are resident follows `--offload`: `none` keeps every component on the GPU from the moment it is
first used (the encoders leave after their phase unless `--encoders gpu`); `model` holds only the component
that runs; `group` streams the transformer's blocks (two resident: the running one and the prefetched one);
`sequential` holds one leaf module of the running component. Host RAM is the loaded weights (every component
passes through host memory while loading) plus the frames and the process itself.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from scail2.conditioning.geometry import SPATIAL_STRIDE, TEMPORAL_STRIDE, valid_length
from scail2.conditioning.masks import HISTORY_MASK_CHANNELS
from scail2.errors import Scail2Error
from scail2.models.state_dict_io import kept_in_fp32
from scail2.models.transformer_directanimator import CUES, is_directanimator_config
from scail2.pipelines.memory_activations import (
    CLIP_TOKENS,
    COMPUTE_BYTES,
    TokenCounts,
    image_encoder_bytes,
    text_encoder_bytes,
    transformer_forward_bytes,
    transformer_tokens,
    vae_decode_bytes,
    vae_encode_bytes,
)
from scail2.pipelines.memory_inventory import (
    SAFETENSORS_BYTES,
    Component,
    ModelFolder,
    block_index,
    is_block_linear,
    meta_module,
    transformer_class,
)

GIB = 2**30
MIB = 2**20

# ------------------------------------------------------------------------------------------------------------
# 1. Options and job
# ------------------------------------------------------------------------------------------------------------

DTYPES = ("bf16", "fp32")
QUANTIZE = ("none", "fp8")
OFFLOAD = ("none", "model", "group", "sequential")
CFG_MODES = ("batched", "sequential")
ENCODERS = ("offload", "cpu", "gpu")
# Bits per weight of the GGUF quantisations (block scales included).
GGUF_BITS = {"Q8_0": 8.5, "Q6_K": 6.5625, "Q5_K": 5.5, "Q4_K": 4.5, "Q3_K": 3.4375, "Q2_K": 2.625}

# What each choice costs, roughly in percent of slowdown or an equivalent loss of fidelity: the plan takes the
# fitting set with the lowest sum. Options that leave the output bit-identical come first (guidance one pass
# at a time, tiled decoding, encoders on the CPU, moving whole components); group offload hides its transfers
# behind compute with prefetch; fp8 changes the output (>= 35 dB PSNR to bf16); sequential offload is many
# times slower and comes last.
COSTS = {
    "cfg_mode": {"batched": 0, "sequential": 1},
    "vae_tiling": {False: 0, True: 1},
    "encoders": {"offload": 0, "gpu": 0, "cpu": 1},
    "offload": {"none": 0, "model": 2, "group": 3, "sequential": 20},
    "quantize": {"none": 0, "fp8": 4},
}


@dataclass(frozen=True)
class RunOptions:
    """The memory-relevant settings of a job (the `scail2 animate` flags of the same names)."""

    dtype: str = "bf16"  # --dtype: weights and compute of the transformer and text encoder
    quantize: str = "none"  # --quantize fp8: e4m3 block linears with per-output-channel scales
    gguf: str | None = None  # the transformer is a GGUF file of this quantisation (Q8_0 ... Q2_K)
    offload: str = "none"  # --offload
    cfg_mode: str = "batched"  # --cfg-mode: both guidance passes in one batch, or one after the other
    vae_tiling: bool = False  # --vae-tiling
    encoders: str = "offload"  # --encoders: leave the GPU after use, run on the CPU, or stay

    def __post_init__(self):
        for flag, value, choices in (
            ("--dtype", self.dtype, DTYPES),
            ("--quantize", self.quantize, QUANTIZE),
            ("--offload", self.offload, OFFLOAD),
            ("--cfg-mode", self.cfg_mode, CFG_MODES),
            ("--encoders", self.encoders, ENCODERS),
        ):
            if value not in choices:
                raise Scail2Error(f"{flag} {value!r} is not one of {', '.join(choices)}")
        if self.gguf is not None and self.gguf not in GGUF_BITS:
            raise Scail2Error(f"GGUF type {self.gguf!r} is not one of {', '.join(GGUF_BITS)}")
        if self.gguf is not None and self.quantize != "none":
            raise Scail2Error("--quantize fp8 applies to safetensors weights, not to a GGUF transformer")

    @property
    def cost(self) -> int:
        return sum(COSTS[field][getattr(self, field)] for field in COSTS)

    def label(self) -> str:
        """'bf16, group offload, sequential CFG' (defaults left out)."""
        weights = f"GGUF {self.gguf}" if self.gguf else (self.dtype if self.quantize == "none" else "fp8")
        parts = [weights]
        if self.offload != "none":
            parts.append(f"{self.offload} offload")
        parts.append(f"{self.cfg_mode} CFG")
        if self.vae_tiling:
            parts.append("VAE tiling")
        if self.encoders != "offload":
            parts.append(f"encoders on {self.encoders.upper()}")
        return ", ".join(parts)

    def flags(self) -> str:
        """The `scail2 animate` flags that select these options (defaults left out)."""
        parts = [] if self.dtype == "bf16" else [f"--dtype {self.dtype}"]
        if self.quantize != "none":
            parts.append(f"--quantize {self.quantize}")
        if self.offload != "none":
            parts.append(f"--offload {self.offload}")
        if self.cfg_mode != "batched":
            parts.append(f"--cfg-mode {self.cfg_mode}")
        if self.vae_tiling:
            parts.append("--vae-tiling")
        if self.encoders != "offload":
            parts.append(f"--encoders {self.encoders}")
        return " ".join(parts)


@dataclass(frozen=True)
class JobShape:
    """The size of a job: the output (driving) video, how it is cut into segments, and guidance."""

    height: int
    width: int
    frames: int  # driving frames of the whole video
    segment_length: int = 81
    overlap: int = 5
    extra_refs: int = 0
    guided: bool = True  # text guidance: an unconditional pass besides the conditional one

    def __post_init__(self):
        if self.height < 32 or self.width < 32 or self.height % 32 or self.width % 32:
            raise Scail2Error(f"--height/--width {self.height}x{self.width}: both must be multiples of 32")
        if self.frames < 1:
            raise Scail2Error(f"--frames must be at least 1, got {self.frames}")
        if self.segment_length < 1 or (self.segment_length - 1) % TEMPORAL_STRIDE:
            raise Scail2Error(f"--segment-length must be 4n+1 (e.g. 81), got {self.segment_length}")

    @property
    def segment_frames(self) -> int:
        """Pixel frames of the longest segment (a short video is one segment padded to 4n + 1)."""
        return min(self.segment_length, valid_length(self.frames))

    @property
    def segments(self) -> int:
        if self.frames <= self.segment_length:
            return 1
        return 1 + -(-(self.frames - self.segment_length) // (self.segment_length - self.overlap))

    def describe(self) -> str:
        return f"{self.frames} frames at {self.height}x{self.width}"


# ------------------------------------------------------------------------------------------------------------
# 2. The plan
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """GPU bytes of one phase: the weights resident during it, and its inputs, activations and outputs."""

    name: str
    weights: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.activations


@dataclass
class MemoryPlan:
    """Predicted GPU bytes per phase and host RAM of one job under one set of options."""

    model: str
    job: JobShape
    options: RunOptions
    tokens: TokenCounts
    phases: list[Phase]
    host: int
    gpu_budget: int | None = None  # usable GPU bytes it was checked against (None: not checked)
    host_budget: int | None = None

    @property
    def peak(self) -> int:
        return max(phase.total for phase in self.phases)

    @property
    def peak_phase(self) -> Phase:
        return max(self.phases, key=lambda phase: phase.total)

    @property
    def fits(self) -> bool:
        gpu_ok = self.gpu_budget is None or self.peak <= self.gpu_budget
        return gpu_ok and (self.host_budget is None or self.host <= self.host_budget)

    def table(self) -> str:
        """The plan as a small Markdown table, one row per phase, then the peak and host RAM (GiB, or MiB for a
        model that peaks under 1 GiB)."""
        unit, name = (GIB, "GiB") if self.peak >= GIB else (MIB, "MiB")
        size = lambda count: f"{count / unit:.1f}"  # noqa: E731
        job = self.job
        rows = [
            f"{self.model}: {job.describe()} ({job.segments} segment(s) of {job.segment_frames} frames, "
            f"{self.tokens.describe()}, {'guided' if job.guided else 'no guidance'})",
            f"options: {self.options.label()}" + (f"  ({self.options.flags()})" if self.options.flags() else ""),
            "",
            f"| phase | weights {name} | activations {name} | total {name} |",
            "|---|---:|---:|---:|",
        ]
        rows += [f"| {p.name} | {size(p.weights)} | {size(p.activations)} | {size(p.total)} |" for p in self.phases]
        budget = "" if self.gpu_budget is None else f" of {size(self.gpu_budget)} usable"
        rows.append(f"| **GPU peak** ({self.peak_phase.name}) | | | **{size(self.peak)}**{budget} |")
        host_budget = "" if self.host_budget is None else f" of {size(self.host_budget)} usable"
        rows.append(f"| host RAM | | | {size(self.host)}{host_budget} |")
        return "\n".join(rows)


def gib(count: int) -> str:
    return f"{count / GIB:.1f}"


# ------------------------------------------------------------------------------------------------------------
# 3. Weights on the GPU
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightSizes:
    """Bytes of one component's weights as they run: all of them, and the parts offloading keeps resident."""

    total: int
    largest_leaf: int  # the largest module holding weights directly (one Linear, one Conv)
    largest_block: int = 0  # transformer only: one block, and everything outside the blocks
    outside_blocks: int = 0
    largest_linear: int = 0  # transformer only: the largest block linear in the compute dtype


def _by_prefix(sizes: dict[str, int], prefix_of) -> int:
    groups: dict[str, int] = {}
    for name, size in sizes.items():
        key = prefix_of(name)
        if key is not None:
            groups[key] = groups.get(key, 0) + size
    return max(groups.values(), default=0)


def tensor_run_bytes(component: Component, options: RunOptions) -> dict[str, int]:
    """Bytes of every weight of the transformer as it runs under `options` (dtype, fp32 modules, fp8, GGUF)."""
    keep_fp32 = transformer_class(component.config)._keep_in_fp32_modules
    element = COMPUTE_BYTES[options.dtype]
    sizes = {}
    for tensor in component.tensors:
        if component.source == "gguf" or tensor.dtype.startswith("F8") or "scale" in tensor.name:
            sizes[tensor.name] = tensor.stored_bytes  # stays quantised in memory, with its scales as stored
        elif options.gguf and is_block_linear(tensor):
            sizes[tensor.name] = int(tensor.numel * GGUF_BITS[options.gguf] / 8)
        elif options.quantize == "fp8" and is_block_linear(tensor):
            sizes[tensor.name] = tensor.numel + 4 * tensor.shape[0]  # e4m3 weight + fp32 scale per output row
        elif kept_in_fp32(tensor.name, keep_fp32):
            sizes[tensor.name] = tensor.numel * 4
        else:
            sizes[tensor.name] = tensor.numel * element
    return sizes


def transformer_sizes(component: Component, options: RunOptions) -> WeightSizes:
    sizes = tensor_run_bytes(component, options)
    in_blocks = {name: size for name, size in sizes.items() if block_index(name) is not None}
    linears = [t.numel for t in component.tensors if is_block_linear(t)]
    return WeightSizes(
        total=sum(sizes.values()),
        largest_leaf=_by_prefix(sizes, lambda name: name.rpartition(".")[0]),
        largest_block=_by_prefix(in_blocks, lambda name: str(block_index(name))),
        outside_blocks=sum(sizes.values()) - sum(in_blocks.values()),
        largest_linear=max(linears, default=0) * COMPUTE_BYTES[options.dtype],
    )


def component_sizes(component: Component, element_bytes: int) -> WeightSizes:
    """A component that runs with every weight in one dtype of `element_bytes`."""
    sizes = {t.name: t.numel * element_bytes for t in component.tensors}
    return WeightSizes(sum(sizes.values()), _by_prefix(sizes, lambda name: name.rpartition(".")[0]))


def run_element_bytes(component: Component, options: RunOptions) -> int:
    """The text encoder runs in --dtype; the image encoder and the VAE in their stored dtype (fp32 under
    --dtype fp32)."""
    if options.dtype == "fp32":
        return 4
    if component.name == "text_encoder":
        return COMPUTE_BYTES[options.dtype]
    return max((SAFETENSORS_BYTES.get(t.dtype, 4) for t in component.tensors), default=4)


# ------------------------------------------------------------------------------------------------------------
# 4. Phases
# ------------------------------------------------------------------------------------------------------------

# Host memory of the process itself: Python, torch, the CUDA runtime and libraries.
PROCESS_HOST_BYTES = 3 * GIB
# DirectAnimator's cues of the whole video, uint8: pose and face RGB, soft body and face masks.
CUE_HOST_BYTES_PER_PIXEL = 2 * 3 + 2


class _MetaModules:
    """Meta-device modules of a folder's VAE and encoders, built once per dtype, for tracing."""

    def __init__(self, folder: ModelFolder):
        self.configs = {name: component.config for name, component in folder.components.items()}
        self.modules: dict[tuple[str, int], torch.nn.Module] = {}

    def get(self, name: str, element_bytes: int) -> torch.nn.Module:
        key = (name, element_bytes)
        if key not in self.modules:
            module = meta_module(name, self.configs[name]).eval()
            if element_bytes != 4:
                # nn.Module's own cast: a VAE has no fp32 modules to keep, so diffusers' warning about them is noise
                module = torch.nn.Module.to(module, torch.bfloat16)
            self.modules[key] = module
        return self.modules[key]


_META_MODULES: dict[str, _MetaModules] = {}


def _meta_modules(folder: ModelFolder) -> _MetaModules:
    """Shared by every plan of folders with the same configs, so their traces (cached per module) are reused."""
    key = json.dumps({name: c.config for name, c in folder.components.items()}, sort_keys=True, default=str)
    if key not in _META_MODULES:
        _META_MODULES.clear()  # one model at a time
        _META_MODULES[key] = _MetaModules(folder)
    return _META_MODULES[key]


def _resident(options: RunOptions, sizes: dict[str, WeightSizes], denoise_transformer: int) -> dict[str, dict]:
    """GPU weight bytes of each component in each phase under the offload mode and encoder placement."""
    te, ie, vae = (sizes[name].total if name in sizes else 0 for name in ("text_encoder", "image_encoder", "vae"))
    transformer = sizes["transformer"].total
    if options.offload == "sequential":
        te, ie, vae = (sizes[n].largest_leaf if n in sizes else 0 for n in ("text_encoder", "image_encoder", "vae"))
    if options.encoders == "cpu":
        te = ie = 0
    stay = options.encoders == "gpu" and options.offload in ("none", "group")
    encoders = te + ie if stay else 0
    # The transformer outside the denoise phase: all of it without offload, none of it when offloaded.
    idle_transformer = transformer if options.offload == "none" else 0
    idle_vae = vae if options.offload in ("none", "group") else 0
    return {
        "text encoder": {"text_encoder": te, "image_encoder": ie if stay else 0},
        "image encoder": {"image_encoder": ie, "text_encoder": te if stay else 0},
        "vae encode": {"vae": vae, "transformer": idle_transformer, "encoders": encoders},
        "denoise": {"transformer": denoise_transformer, "vae": idle_vae, "encoders": encoders},
        "vae decode": {"vae": vae, "transformer": idle_transformer, "encoders": encoders},
    }


def _denoise_inputs(folder: ModelFolder, job: JobShape, batch: int) -> int:
    """The sampler's latents and one segment's conditions, fp32 on the GPU."""
    cfg = folder.transformer.config
    z, t = cfg.get("out_dim", 16), (job.segment_frames - 1) // TEMPORAL_STRIDE + 1
    h, w = job.height // SPATIAL_STRIDE, job.width // SPATIAL_STRIDE
    mask, scale = cfg.get("mask_dim", 28), cfg.get("driving_scale", 2)
    latent = z * t * h * w
    if is_directanimator_config(cfg):
        driving = len(CUES) * (z + HISTORY_MASK_CHANNELS) * t * h * w  # cue latents and packed soft masks
    else:
        driving = (z + mask) * t * (h // scale) * (w // scale)  # driving latents and masks
    conditions = (
        (z + mask) * (1 + job.extra_refs) * h * w  # reference (and extra views) latent and mask
        + mask * t * h * w  # the zero video frames of the reference mask
        + driving
        + 4 * t * h * w  # history mask
        + batch * cfg.get("text_len", 512) * cfg.get("text_dim", 4096)
        + (CLIP_TOKENS * cfg.get("image_dim", 1280) if cfg.get("model_type", "i2v") == "i2v" else 0)
    )
    # Noise, the latent, the velocity of each pass and the two model outputs a second-order sampler keeps.
    return 4 * ((5 + batch) * latent + conditions)


def _phase_activations(folder: ModelFolder, job: JobShape, options: RunOptions, tokens, sizes) -> dict[str, int]:
    """Activation bytes of every phase that runs on the GPU."""
    acts = _encoder_activations(folder, job, options)
    acts.update(_vae_activations(folder, job, options))
    batch = 2 if job.guided and options.cfg_mode == "batched" else 1
    precision = "fp32" if options.dtype == "fp32" else "bf16"
    forward = transformer_forward_bytes(folder.transformer.config, tokens, batch, precision)
    # fp8 and GGUF layers dequantise their weight to the compute dtype for the matmul, one layer at a time.
    dequantised = sizes["transformer"].largest_linear if options.quantize == "fp8" or options.gguf else 0
    acts["denoise"] = forward + dequantised + _denoise_inputs(folder, job, batch)
    return acts


def _encoder_activations(folder: ModelFolder, job: JobShape, options: RunOptions) -> dict[str, int]:
    """The encoders' phases, traced (none on the GPU with --encoders cpu)."""
    meta, components, acts = _meta_modules(folder), folder.components, {}
    if options.encoders == "cpu":
        return acts
    if "text_encoder" in components:
        text_encoder = meta.get("text_encoder", run_element_bytes(components["text_encoder"], options))
        prompts = 2 if job.guided else 1  # the negative prompt rides in the same batch
        acts["text encoder"] = text_encoder_bytes(text_encoder, prompts, folder.transformer.config["text_len"])
    if "image_encoder" in components:
        image_encoder = meta.get("image_encoder", run_element_bytes(components["image_encoder"], options))
        acts["image encoder"] = image_encoder_bytes(image_encoder, 1)
    return acts


def _vae_activations(folder: ModelFolder, job: JobShape, options: RunOptions) -> dict[str, int]:
    """The largest VAE encode of the job (reference, a segment's half-resolution driving frames or, for
    DirectAnimator, its full-resolution cue videos one after the other, the re-encoded history) and one
    segment's decode, traced."""
    vae = _meta_modules(folder).get("vae", run_element_bytes(folder.vae, options))
    tiled, frames, h, w = options.vae_tiling, job.segment_frames, job.height, job.width
    driving_scale = (
        1 if is_directanimator_config(folder.transformer.config) else folder.transformer.config.get("driving_scale", 2)
    )
    encodes = [
        vae_encode_bytes(vae, 1, h, w, tiled, batch=max(1, job.extra_refs)),
        vae_encode_bytes(vae, frames, h // driving_scale, w // driving_scale, tiled),
    ]
    if job.segments > 1:
        encodes.append(vae_encode_bytes(vae, job.overlap, h, w, tiled))
    latent_frames = (frames - 1) // TEMPORAL_STRIDE + 1
    decoded = vae_decode_bytes(vae, latent_frames, h // SPATIAL_STRIDE, w // SPATIAL_STRIDE, tiled)
    # The decoded video's finite check (bool) and its uint8 frames before they leave for the host.
    return {"vae encode": max(encodes), "vae decode": decoded + frames * h * w * 3 * 2}


def _host_bytes(folder: ModelFolder, job: JobShape, sizes: dict[str, WeightSizes], options: RunOptions) -> int:
    """Every component's weights pass through host RAM while loading; plus the frames and the process."""
    frames = 3 * job.frames * job.height * job.width * 3  # driving frames, masks and output, uint8
    if is_directanimator_config(folder.transformer.config):
        frames += CUE_HOST_BYTES_PER_PIXEL * job.frames * job.height * job.width
    segment_video = 3 * job.segment_frames * job.height * job.width * 4  # one segment's frames as floats
    weights = sum(size.total for size in sizes.values())
    stored_fp8 = any(t.dtype.startswith("F8") for t in folder.transformer.tensors)
    quantising = options.quantize == "fp8" and not stored_fp8
    reading = folder.transformer.largest_file if quantising else 0  # bf16 shard being quantised
    return PROCESS_HOST_BYTES + frames + segment_video + weights + reading


def stored_format(transformer: Component, options: RunOptions) -> RunOptions:
    """Options that say what the folder's transformer already is: a GGUF file, or fp8 weights."""
    if transformer.source == "gguf" and options.gguf is None:
        return dataclasses.replace(options, gguf=transformer.gguf_type if transformer.gguf_type in GGUF_BITS else None)
    if any(t.dtype.startswith("F8") for t in transformer.tensors):
        return dataclasses.replace(options, quantize="fp8")
    return options


def predict(folder: ModelFolder | str | Path, job: JobShape, options: RunOptions = RunOptions()) -> MemoryPlan:
    """The memory plan of `job` on the model in `folder` under `options` (nothing loaded, nothing checked)."""
    folder = folder if isinstance(folder, ModelFolder) else ModelFolder.read(folder)
    transformer = folder.transformer
    options = stored_format(transformer, options)
    sizes = {"transformer": transformer_sizes(transformer, options)}
    for name in ("text_encoder", "image_encoder", "vae"):
        if name in folder.components:
            component = folder.components[name]
            sizes[name] = component_sizes(component, run_element_bytes(component, options))
    tokens = transformer_tokens(transformer.config, job.segment_frames, job.height, job.width, job.extra_refs)
    resident_transformer = {
        "none": sizes["transformer"].total,
        "model": sizes["transformer"].total,
        "group": sizes["transformer"].outside_blocks + 2 * sizes["transformer"].largest_block,
        "sequential": sizes["transformer"].largest_leaf,
    }[options.offload]
    resident = _resident(options, sizes, resident_transformer)
    activations = _phase_activations(folder, job, options, tokens, sizes)
    phases = [Phase(name, sum(resident[name].values()), activations[name]) for name in resident if name in activations]
    host = _host_bytes(folder, job, sizes, options)
    return MemoryPlan(folder.name, job, options, tokens, phases, host)


# ------------------------------------------------------------------------------------------------------------
# 5. Budgets, choice and refusal
# ------------------------------------------------------------------------------------------------------------

# Of a card's memory, what torch's allocator cannot have: the CUDA context and the cuBLAS/cuDNN workspaces
# (outside the allocator), and the caching allocator's fragmentation.
CUDA_CONTEXT_BYTES = 1 * GIB
FRAGMENTATION = 0.05


def usable_gpu_bytes(gpu_memory_gib: float) -> int:
    """Bytes a job may plan for on a card of `gpu_memory_gib` GiB."""
    return int(gpu_memory_gib * GIB * (1 - FRAGMENTATION) - CUDA_CONTEXT_BYTES)


def detected_gpu_bytes() -> int | None:
    """Usable bytes of the current CUDA device from its free memory now (the context already exists), or None."""
    if not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info()
    return int(free * (1 - FRAGMENTATION) - CUDA_CONTEXT_BYTES // 2)


def detected_host_bytes() -> int | None:
    """Available host RAM now, or None when psutil (a dependency of accelerate) is missing."""
    try:
        import psutil
    except ModuleNotFoundError:
        return None
    return int(psutil.virtual_memory().available)


def candidate_options(folder: ModelFolder, job: JobShape, fixed: Mapping[str, object] | None = None):
    """Every option set the plan may choose, cheapest first; `fixed` fields are held at the given values."""
    fixed = dict(fixed or {})
    unknown = set(fixed) - {f.name for f in dataclasses.fields(RunOptions)}
    if unknown:
        raise ValueError(f"unknown option fields {sorted(unknown)}")
    has_encoders = any(name in folder.components for name in ("text_encoder", "image_encoder"))
    space = {
        "dtype": ("bf16",),
        "gguf": (None,),
        "quantize": QUANTIZE if fixed.get("gguf") is None and folder.transformer.source != "gguf" else ("none",),
        # (a transformer stored in fp8 or GGUF stays so: `predict` reads its format from the folder)
        "offload": OFFLOAD,
        "cfg_mode": CFG_MODES if job.guided else ("batched",),
        "vae_tiling": (False, True),
        "encoders": ("offload", "cpu") if has_encoders else ("offload",),
    }
    space.update({name: (value,) for name, value in fixed.items()})
    names = list(space)
    options = [RunOptions(**dict(zip(names, values))) for values in itertools.product(*space.values())]
    return sorted(options, key=lambda o: o.cost)


def choose_options(
    folder: ModelFolder | str | Path,
    job: JobShape,
    gpu_budget: int,
    host_budget: int | None = None,
    fixed: Mapping[str, object] | None = None,
) -> MemoryPlan:
    """The cheapest options (`COSTS`; among equal costs, the lowest peak) whose plan fits the budgets.

    Raises a one-line Scail2Error saying what would make the job fit when none does.
    """
    folder = folder if isinstance(folder, ModelFolder) else ModelFolder.read(folder)
    plan = _cheapest_fit(folder, job, gpu_budget, host_budget, fixed)
    if plan is None:
        raise Scail2Error(refusal(folder, job, gpu_budget, host_budget, fixed))
    return plan


def _cheapest_fit(folder, job, gpu_budget, host_budget, fixed) -> MemoryPlan | None:
    for _, group in itertools.groupby(candidate_options(folder, job, fixed), key=lambda o: o.cost):
        plans = [_checked(predict(folder, job, options), gpu_budget, host_budget) for options in group]
        fitting = [plan for plan in plans if plan.fits]
        if fitting:
            return min(fitting, key=lambda plan: plan.peak)
    return None


def _checked(plan: MemoryPlan, gpu_budget: int | None, host_budget: int | None) -> MemoryPlan:
    plan.gpu_budget, plan.host_budget = gpu_budget, host_budget
    return plan


# Smaller outputs tried, as a fraction of each side, when nothing fits at the asked size.
SMALLER_SIZES = (0.875, 0.75, 0.625, 0.5, 0.375, 0.25)


def refusal(folder: ModelFolder, job: JobShape, gpu_budget: int, host_budget: int | None, fixed=None) -> str:
    """One line: what the leanest options (or the fixed ones) need, and the first change that makes the job fit."""
    plans = [
        _checked(predict(folder, job, options), gpu_budget, host_budget)
        for options in candidate_options(folder, job, fixed)
    ]
    even = " even" if len(plans) > 1 else ""
    gpu_fitting = [plan for plan in plans if plan.peak <= gpu_budget]
    if gpu_fitting:  # only host RAM is short
        leanest = min(gpu_fitting, key=lambda plan: plan.host)
        need = (
            f"needs {gib(leanest.host)} GiB of host RAM{even} with {leanest.options.label()} "
            f"but {gib(host_budget)} GiB is free"
        )
    else:
        leanest = min(plans, key=lambda plan: (plan.peak, plan.host))
        need = (
            f"needs {gib(leanest.peak)} GiB of GPU memory{even} with {leanest.options.label()} "
            f"but {gib(gpu_budget)} GiB is usable"
        )
    return f"{folder.name}: {job.describe()} {need}; {_fix(folder, job, gpu_budget, host_budget, fixed, leanest)}"


def _fix(folder, job, gpu_budget, host_budget, fixed, leanest) -> str:
    """The first change that fits: other options, GGUF weights, a smaller size; else the memory it needs."""
    if fixed:
        plan = _cheapest_fit(folder, job, gpu_budget, host_budget, None)
        if plan is not None:
            return f"run it with {plan.options.flags() or 'the default options'} ({gib(plan.peak)} GiB)"
    if folder.transformer.source != "gguf":
        for gguf in GGUF_BITS:
            plan = _cheapest_fit(folder, job, gpu_budget, host_budget, {"gguf": gguf})
            if plan is not None:
                return f"it fits with a {gguf} GGUF transformer file ({gib(plan.peak)} GiB, {plan.options.label()})"
    for fraction in SMALLER_SIZES:
        height, width = (max(32, int(side * fraction) // 32 * 32) for side in (job.height, job.width))
        smaller = dataclasses.replace(job, height=height, width=width)
        plan = _cheapest_fit(folder, smaller, gpu_budget, host_budget, None)
        if plan is not None:
            return f"it fits at --height {height} --width {width} ({gib(plan.peak)} GiB, {plan.options.label()})"
    if leanest.peak > gpu_budget:
        return f"it needs a GPU of at least {gib(usable_to_card(leanest.peak))} GiB"
    return f"it needs at least {gib(leanest.host)} GiB of free RAM"


def usable_to_card(usable: int) -> int:
    """The card size whose usable memory (`usable_gpu_bytes`) is `usable` bytes."""
    return int((usable + CUDA_CONTEXT_BYTES) / (1 - FRAGMENTATION))


def check_fits(
    model_dir: str | Path,
    height: int,
    width: int,
    frames: int,
    options: RunOptions | Mapping[str, object] | None = None,
    gpu_memory: float | None = None,
    *,
    host_memory: float | None = None,
    segment_length: int = 81,
    overlap: int = 5,
    extra_refs: int = 0,
    guided: bool = True,
) -> MemoryPlan:
    """The memory plan of an animation job, checked before any weight is loaded (for `scail2 animate` to call).

    `options`: a `RunOptions` is checked as given; a mapping of some fields holds those and chooses the rest;
    None chooses all. `gpu_memory` (GiB, the card's size) defaults to the detected CUDA device's free memory;
    with neither (a CPU run) nothing is checked and the plan of `options` comes back. Raises a one-line
    Scail2Error naming what would make the job fit.
    """
    folder = ModelFolder.read(model_dir)
    job = JobShape(height, width, frames, segment_length, overlap, extra_refs, guided)
    detected = gpu_memory is None
    gpu_budget = detected_gpu_bytes() if detected else usable_gpu_bytes(gpu_memory)
    host_budget = int(host_memory * GIB) if host_memory is not None else (detected_host_bytes() if detected else None)
    if gpu_budget is None:
        return predict(folder, job, options if isinstance(options, RunOptions) else RunOptions(**(options or {})))
    if isinstance(options, RunOptions):
        plan = _checked(predict(folder, job, options), gpu_budget, host_budget)
        if plan.fits:
            return plan
        raise Scail2Error(refusal(folder, job, gpu_budget, host_budget, dataclasses.asdict(options)))
    return choose_options(folder, job, gpu_budget, host_budget, options)


def cards_table(rows: list[tuple[float, MemoryPlan | str]]) -> str:
    """One row per card size: the options chosen and the peaks, or (a string) why the job does not fit."""
    lines = [
        "| GPU | options picked | flags | GPU peak GiB | denoise GiB | VAE decode GiB | host RAM GiB |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for card, plan in rows:
        if isinstance(plan, str):
            lines.append(f"| {card:g} GiB | does not fit: {plan} | | | | | |")
            continue
        phases = {phase.name: phase.total for phase in plan.phases}
        flags = f"`{plan.options.flags()}`" if plan.options.flags() else "(defaults)"
        lines.append(
            f"| {card:g} GiB | {plan.options.label()} | {flags} | {gib(plan.peak)} | {gib(phases['denoise'])} "
            f"| {gib(phases['vae decode'])} | {gib(plan.host)} |"
        )
    return "\n".join(lines)
