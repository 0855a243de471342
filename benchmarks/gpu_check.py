"""One prepared GPU check: what the 14B model costs on this GPU, in one run of at most about five minutes.

    python -m benchmarks.gpu_check --out gpu_check.json                 # on the GPU machine (benchmarks/README.md)
    python -m benchmarks.gpu_check --cpu-tiny --out /tmp/check.json     # every section at tiny sizes on a CPU
    python -m benchmarks.gpu_check --table gpu_check.json               # print the table of an earlier run

Sections, in order (`--sections` names a subset; `train` runs only when named):

    device       ceilings: a large bf16 matmul (TFLOP/s), device copy and host<->device bandwidth (GB/s)
    attention    q/k/v [1, 48832, 40, 128] bf16 through SDPA and each diffusers attention backend installed
    transformer  SCAIL-2 14B built on the meta device, materialised in bf16 on the GPU (random weights), one
                 i2v forward (512 text and 257 CLIP tokens; 81x512x896 = 48,832 tokens) at batch 1 and 2 with
                 SDPA, and at batch 1 with the fastest exact backend: seconds, peak memory, TFLOP/s and their
                 share of the measured matmul ceiling
    fp8          the same model with fp8 block linears (scail2.models.quantize): seconds, peak memory, weights,
                 and its error against the bf16 output
    wan          diffusers' WanTransformer3DModel with the Wan2.1 I2V 14B config at the same token count
    vae          AutoencoderKLWan (Wan2.1 config, random weights) decoding 81 frames at 512x896, untiled and tiled
    segment      one whole segment of the pipeline under a 24 GB cap (`set_per_process_memory_fraction`) with the
                 fp8 transformer and block-level group offload (`MemorySettings`), a few sampler steps
    multigpu     one guided step over every GPU (guidance split in two, Ulysses over the rest) against one GPU:
                 seconds, speed-up, PSNR, beside `scail2 plan --gpus`'s prediction (benchmarks/multi_gpu.py);
                 with one GPU, the prediction only
    train        one LoRA training step (rank 128 on every block linear, activation checkpointing, AdamW) of
                 the bf16 model: seconds, peak memory (its checkpointed activations alone take ~40 GB)

Every section is guarded: an error is recorded (with the end of its traceback) and the next section runs. The
JSON at `--out` is rewritten after every section (a section in progress reads "running"), so a run that is cut
off keeps what finished. A section that would start after `--budget-s` seconds is recorded as skipped. The FLOP
counts are those of the transformer blocks' matmuls and attention (embeddings and head left out). The weights
are random: the fp8 error here is that of random weights, not a trained model's.
--preset/--frames/--height/--width measure other sizes (the Wan model then takes the preset's sizes too).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from benchmarks.common import build_inputs, materialise, timed

SECTIONS = ("device", "attention", "transformer", "fp8", "wan", "vae", "segment", "multigpu", "train")
# `train` runs only when named: at 48,832 tokens its checkpointed activations alone take about 40 GB.
DEFAULT_SECTIONS = SECTIONS[:-1]
GiB = 2**30

# Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, no sparsity), by device name.
DATASHEET_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "B200": 2250.0, "A100": 312.0}

# Attention kernels tried beside SDPA, and why the others are not: the check measures what is installed.
ATTENTION_BACKENDS = (
    "_native_flash",
    "_native_efficient",
    "_native_cudnn",
    "flash",
    "_flash_3",
    "sage",
    "_sage_qk_int8_pv_fp8_cuda_sm90",
    "_sage_qk_int8_pv_fp16_cuda",
    "_sage_qk_int8_pv_fp16_triton",
    "xformers",
    "_native_math",
    "flex",
)
# A backend whose output differs from SDPA's by more than this relative L2 error (the int8 Sage kernels) is
# reported but not used as the transformer's "best exact" kernel.
EXACT_ATTENTION_ERROR = 1e-2


# ------------------------------------------------------------------------------------------------------------
# Sizes
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Sizes:
    """Everything the sections build, at full size on a GPU or tiny on a CPU."""

    preset: str = "14b"
    frames: int = 81
    height: int = 512
    width: int = 896
    text_tokens: int = 512  # umT5 tokens given to the transformers (SCAIL-2 pads them to its text_len anyway)
    image_tokens: int = 257
    attention_shape: tuple[int, int, int, int] = (1, 48832, 40, 128)
    matmul_n: int = 8192
    copy_mib: int = 1024
    vae_config: dict = field(default_factory=dict)  # diffusers' defaults: Wan2.1's VAE
    vae_tiles: dict = field(default_factory=dict)  # diffusers' default tiles (256 px every 192 px)
    segment_steps: int = 2
    memory_cap_gib: float = 24.0
    lora_rank: int = 128
    train_steps: int = 1
    repeats: int = 1


def tiny_sizes() -> Sizes:
    """Every section at a size a CPU runs in seconds, with unequal sizes so a swapped axis fails."""
    return Sizes(
        preset="tiny",
        frames=9,
        height=32,
        width=64,
        text_tokens=7,
        attention_shape=(1, 96, 2, 16),
        matmul_n=128,
        copy_mib=4,
        vae_config=dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1),
        vae_tiles=dict(
            tile_sample_min_height=32,
            tile_sample_min_width=32,
            tile_sample_stride_height=16,
            tile_sample_stride_width=16,
        ),
        segment_steps=2,
        lora_rank=4,
        train_steps=2,
    )


def wan_config_like(preset: str) -> dict:
    """diffusers' `WanTransformer3DModel` config with the sizes of a SCAIL-2 preset: for `14b`, the Wan2.1 I2V
    14B config (SCAIL-2 is its fine-tune: the same blocks, plus the driving stream's embeddings)."""
    from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel

    with torch.device("meta"):
        cfg = SCAIL2Transformer3DModel.from_preset(preset).config
    i2v = cfg.model_type == "i2v"
    return dict(
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.dim // cfg.num_heads,
        in_channels=36 if i2v else 16,  # i2v: noise, plus the image condition's latent and mask
        out_channels=cfg.out_dim,
        text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        cross_attn_norm=cfg.cross_attn_norm,
        qk_norm="rms_norm_across_heads" if cfg.qk_norm else None,
        eps=cfg.eps,
        image_dim=cfg.image_dim if i2v else None,
        added_kv_proj_dim=cfg.dim if i2v else None,
    )


def latent_grid(frames: int, height: int, width: int) -> tuple[int, int, int]:
    return (frames - 1) // 4 + 1, height // 8, width // 8


def scail2_tokens(frames: int, height: int, width: int) -> int:
    """Tokens per sample: reference and video at the patch grid, the driving stream at half of it."""
    t, h, w = latent_grid(frames, height, width)
    return (1 + t) * (h // 2) * (w // 2) + t * (h // 4) * (w // 4)


def wan_latent_for(tokens: int, height: int, width: int) -> tuple[int, int, int]:
    """A Wan latent (frames, h, w) with exactly `tokens` patches: the video's patch grid, halved until it divides
    the count, and as many latent frames as that takes (48,832 = 109 frames of 16 x 28 patches)."""
    _, h, w = latent_grid(1, height, width)
    grid_h, grid_w = h // 2, w // 2
    while tokens % (grid_h * grid_w):
        grid_h, grid_w = max(grid_h // 2, 1), max(grid_w // 2, 1)
    return tokens // (grid_h * grid_w), 2 * grid_h, 2 * grid_w


def block_flops(dim: int, ffn_dim: int, layers: int, tokens: int, text: int, image: int, batch: int) -> float:
    """Matmul and attention FLOPs of the transformer blocks of one forward (Wan and SCAIL-2 blocks alike)."""
    self_attn = 2 * tokens * dim * dim * 4 + 4 * tokens * tokens * dim
    cross_attn = 2 * tokens * dim * dim * 2 + 2 * (text + image) * dim * dim * 2 + 4 * tokens * (text + image) * dim
    ffn = 2 * tokens * dim * ffn_dim * 2
    return float(batch * layers * (self_attn + cross_attn + ffn))


# ------------------------------------------------------------------------------------------------------------
# The run: sections, their guard, the JSON
# ------------------------------------------------------------------------------------------------------------


class Check:
    """State shared by the sections: device, sizes, results so far, and the SCAIL-2 model once built."""

    def __init__(self, args, sizes: Sizes, device: torch.device):
        self.args, self.sizes, self.device = args, sizes, device
        self.start = time.perf_counter()
        self.model = None  # SCAIL-2 transformer, bf16 until the fp8 section quantises it
        self.model_kind = None
        self.bf16_output = None  # batch-1 output of the bf16 model, on the CPU
        self.report = {"meta": run_metadata(args, sizes, device), "sections": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def write(self) -> None:
        if not self.args.out:
            return
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        partial.write_text(json.dumps(self.report, indent=2, default=str) + "\n")
        partial.replace(out)

    def run(self, name: str, section) -> None:
        entry = self.report["sections"][name] = {"status": "running", "started_s": round(self.elapsed(), 1)}
        if self.elapsed() > self.args.budget_s:
            entry.update(status="skipped", reason=f"time budget of {self.args.budget_s:.0f} s spent")
            self.write()
            return
        self.write()
        tic = time.perf_counter()
        try:
            entry.update(status="ok", result=section(self))
        except NotAvailable as missing:
            entry.update(status="not available", reason=str(missing))
        except Exception as error:  # noqa: BLE001 (every failure is recorded and the next section runs)
            entry.update(status="error", error=one_line(error), traceback=traceback.format_exc().splitlines()[-12:])
        entry["seconds"] = round(time.perf_counter() - tic, 2)
        self.free()
        self.write()
        print(f"[{self.elapsed():6.1f} s] {name}: {entry['status']}", file=sys.stderr, flush=True)

    def free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def scail2_model(self, kind: str = "bf16"):
        """The SCAIL-2 transformer on the device, built once; "fp8" quantises its block linears in place."""
        if self.model is None or (self.model_kind == "fp8" and kind == "bf16"):
            self.drop_model()
            from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel

            with torch.device("meta"):
                model = SCAIL2Transformer3DModel.from_preset(self.sizes.preset)
            self.model = materialise(model, self.device, torch.bfloat16, model._keep_in_fp32_modules).eval()
            self.model_kind = "bf16"
        if kind == "fp8" and self.model_kind != "fp8":
            quantize_transformer = fp8_quantizer()
            self.model.to(self.device)
            quantize_transformer(self.model, "fp8")
            self.model_kind = "fp8"
        return self.model

    def drop_model(self) -> None:
        self.model, self.model_kind = None, None
        self.free()


class NotAvailable(Exception):
    """A section that needs a part of scail2 this checkout does not have (recorded as "not available")."""


def one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:400]


def run_metadata(args, sizes: Sizes, device: torch.device) -> dict:
    import diffusers

    meta = {
        "mode": "cpu-tiny" if args.cpu_tiny else "gpu",
        "argv": sys.argv[1:],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "device": str(device),
        "sizes": asdict(sizes),
        "tokens": scail2_tokens(sizes.frames, sizes.height, sizes.width),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / GiB, 1),
            datasheet_bf16_tflops=datasheet_peak(props.name),
        )
    return meta


def datasheet_peak(name: str) -> float | None:
    for key, tflops in DATASHEET_BF16_TFLOPS.items():  # "H100 PCIe" before "H100"
        if key in name:
            return tflops
    return None


def fp8_quantizer():
    """`scail2.models.quantize.quantize_transformer`, or NotAvailable where this checkout has no such module."""
    try:
        from scail2.models.quantize import quantize_transformer
    except ImportError as error:
        raise NotAvailable(f"scail2.models.quantize ({error})") from None
    return quantize_transformer


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / GiB, 2) if device.type == "cuda" else None


def allocated_gib(device: torch.device) -> float | None:
    return round(torch.cuda.memory_allocated(device) / GiB, 2) if device.type == "cuda" else None


def best_of(fn, device: torch.device, repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls after one warm-up call."""
    fn()
    return min(timed(fn, device)[1] for _ in range(repeats))


def table(header: list[str], rows: list[list]) -> dict:
    return {"header": header, "rows": rows}


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


# ------------------------------------------------------------------------------------------------------------
# 1. Device ceilings
# ------------------------------------------------------------------------------------------------------------


def section_device(check: Check) -> dict:
    device, n = check.device, check.sizes.matmul_n
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    iterations = 20

    def matmuls():
        for _ in range(iterations):
            torch.mm(a, b)

    matmul_tflops = 2 * n**3 * iterations / best_of(matmuls, device, 3) / 1e12
    nbytes = check.sizes.copy_mib * 2**20
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_gbs = 2 * nbytes / best_of(lambda: dst.copy_(src), device, 5) / 1e9  # read + write
    result = {"matmul_n": n, "matmul_bf16_tflops": round(matmul_tflops, 1), "copy_gbs": round(copy_gbs, 1)}
    if device.type == "cuda":
        host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        result["host_to_device_gbs"] = round(nbytes / best_of(lambda: src.copy_(host), device, 3) / 1e9, 1)
        result["device_to_host_gbs"] = round(nbytes / best_of(lambda: host.copy_(src), device, 3) / 1e9, 1)
    check.report["meta"]["matmul_bf16_tflops"] = result["matmul_bf16_tflops"]
    rows = [[f"bf16 matmul {n}x{n}x{n}", f"{matmul_tflops:,.1f} TFLOP/s"], ["device copy", f"{copy_gbs:,.1f} GB/s"]]
    for key, label in (("host_to_device_gbs", "host -> device (pinned)"), ("device_to_host_gbs", "device -> host")):
        if key in result:
            rows.append([label, f"{result[key]:,.1f} GB/s"])
    return {**result, "table": table(["ceiling", "measured"], rows)}


def matmul_ceiling(check: Check) -> float | None:
    return check.report["meta"].get("matmul_bf16_tflops")


# ------------------------------------------------------------------------------------------------------------
# 2. Attention backends
# ------------------------------------------------------------------------------------------------------------


def attention_skip_reason(name: str, device: torch.device, shape) -> str | None:
    """Why a backend is not run here, or None to run it (its package check included)."""
    from scail2.errors import Scail2Error
    from scail2.models.attention import check_attention

    batch, tokens, heads, _ = shape
    if name == "_native_math" and device.type == "cuda" and tokens > 8192:
        return f"materialises the {batch * heads * tokens**2 * 2 / GiB:,.0f} GiB score matrix"
    if name == "flex":
        return "compiles its kernel with torch.compile on first use (minutes): not a fair one-call timing"
    try:
        check_attention(name, device)
    except Scail2Error as error:
        return str(error)
    return None


def section_attention(check: Check) -> dict:
    from scail2.models.attention import attention

    device, shape = check.device, check.sizes.attention_shape
    generator = torch.Generator(device).manual_seed(0)
    q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16, generator=generator) for _ in range(3))
    batch, tokens, heads, head_dim = shape
    flops = 4 * batch * heads * tokens * tokens * head_dim
    reference = attention(q, k, v)
    results = {"sdpa": attention_timing(lambda: attention(q, k, v), reference, flops, check)}
    for name in ATTENTION_BACKENDS:
        reason = attention_skip_reason(name, device, shape)
        if reason:
            results[name] = {"status": "skipped", "reason": reason}
            continue
        try:
            results[name] = attention_timing(lambda name=name: attention(q, k, v, name), reference, flops, check)
        except Exception as error:  # noqa: BLE001 (a kernel that fails at run time is a result too)
            results[name] = {"status": "error", "error": one_line(error)}
        check.free()
    exact = {n: r for n, r in results.items() if r["status"] == "ok" and r["rel_error"] <= EXACT_ATTENTION_ERROR}
    best = min(exact, key=lambda n: exact[n]["ms"]) if exact else None
    check.report["meta"]["best_exact_attention"] = best
    rows = [
        [name, r["status"], fmt(r.get("ms")), fmt(r.get("tflops"), 1), fmt(r.get("rel_error"), 5), r.get("reason")]
        for name, r in results.items()
    ]
    header = ["backend", "status", "ms", "TFLOP/s", "rel. L2 vs SDPA", "note"]
    return {"shape": list(shape), "backends": results, "best_exact": best, "table": table(header, rows)}


def attention_timing(call, reference: torch.Tensor, flops: int, check: Check) -> dict:
    seconds = best_of(call, check.device, max(3, check.sizes.repeats))
    out = call().float()
    error = ((out - reference.float()).norm() / reference.float().norm()).item()
    return {
        "status": "ok",
        "ms": round(1000 * seconds, 3),
        "tflops": round(flops / seconds / 1e12, 1),
        "rel_error": error,
    }


# ------------------------------------------------------------------------------------------------------------
# 3-4. The SCAIL-2 transformer: bf16 and fp8
# ------------------------------------------------------------------------------------------------------------


def scail2_inputs(check: Check, model, batch: int) -> dict:
    torch.manual_seed(0)
    s = check.sizes
    text = min(s.text_tokens, model.config.text_len)
    inputs, _ = build_inputs(model, batch, s.frames, s.height, s.width, check.device, text)
    if "image_embeds" in inputs:
        inputs["image_embeds"] = inputs["image_embeds"][:, : s.image_tokens]
    return inputs


def forward_row(check: Check, label: str, model, batch: int) -> tuple[dict, torch.Tensor]:
    """One timed forward at `batch` (after a warm-up): its speed row and its output (on the CPU)."""
    s, device, cfg = check.sizes, check.device, model.config
    tokens = scail2_tokens(s.frames, s.height, s.width)
    inputs = scail2_inputs(check, model, batch)
    with torch.no_grad():
        model(**inputs)  # warm-up: kernels chosen, RoPE tables built
        reset_peak(device)
        runs = [timed(lambda: model(**inputs).sample, device) for _ in range(s.repeats)]
    image = s.image_tokens if cfg.model_type == "i2v" else 0
    flops = block_flops(cfg.dim, cfg.ffn_dim, cfg.num_layers, tokens, cfg.text_len, image, batch)
    row = speed_row(check, label, batch, tokens, min(seconds for _, seconds in runs), flops)
    return row, runs[-1][0].float().cpu()


def speed_row(check: Check, label: str, batch: int, tokens: int, seconds: float, flops: float) -> dict:
    tflops = flops / seconds / 1e12
    ceiling, datasheet = matmul_ceiling(check), check.report["meta"].get("datasheet_bf16_tflops")
    return {
        "variant": label,
        "batch": batch,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "peak_gib": peak_gib(check.device),
        "tflops": round(tflops, 1),
        "of_matmul_ceiling": round(tflops / ceiling, 3) if ceiling else None,
        "of_datasheet_peak": round(tflops / datasheet, 3) if datasheet else None,
    }


def percent(fraction: float | None) -> str:
    return fmt(None) if fraction is None else f"{100 * fraction:.0f}%"


def speed_table(rows: list[dict]) -> dict:
    header = ["variant", "batch", "tokens", "s", "peak GiB", "TFLOP/s", "of matmul ceiling", "of datasheet peak"]
    body = [
        [r["variant"], r["batch"], f"{r['tokens']:,}", fmt(r["seconds"], 3), fmt(r["peak_gib"]), fmt(r["tflops"], 1)]
        + [percent(r["of_matmul_ceiling"]), percent(r["of_datasheet_peak"])]
        for r in rows
    ]
    return table(header, body)


def section_transformer(check: Check) -> dict:
    from scail2.models.attention import set_attention

    model = check.scail2_model("bf16")
    weights = allocated_gib(check.device)
    (one, check.bf16_output), (two, _) = (forward_row(check, "bf16, sdpa", model, batch) for batch in (1, 2))
    rows = [one, two]
    best = check.report["meta"].get("best_exact_attention")
    if best and best != "sdpa":
        set_attention(model, best, check.device)
        try:
            rows.append(forward_row(check, f"bf16, {best}", model, 1)[0])
        finally:
            set_attention(model, None, check.device)
    return {"weights_gib": weights, "rows": rows, "table": speed_table(rows)}


def section_fp8(check: Check) -> dict:
    if check.bf16_output is None:
        check.bf16_output = forward_row(check, "bf16, sdpa", check.scail2_model("bf16"), 1)[1]
    model = check.scail2_model("fp8")
    weights = allocated_gib(check.device)
    row, output = forward_row(check, "fp8 block linears", model, 1)
    error = {
        "rel_l2_vs_bf16": ((output - check.bf16_output).norm() / check.bf16_output.norm()).item(),
        "psnr_db_vs_bf16": output_psnr(output, check.bf16_output),
    }
    result_table = speed_table([row])
    result_table["header"] += ["rel. L2 vs bf16", "PSNR dB vs bf16"]
    result_table["rows"][0] += [fmt(error["rel_l2_vs_bf16"], 4), fmt(error["psnr_db_vs_bf16"], 1)]
    return {"weights_gib": weights, "rows": [row], **error, "table": result_table}


def output_psnr(output: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR with the reference's range as the peak (a velocity has no fixed range)."""
    mse = ((output - reference) ** 2).mean().item()
    peak = (reference.max() - reference.min()).item()
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


# ------------------------------------------------------------------------------------------------------------
# 5. diffusers' Wan transformer at the same token count
# ------------------------------------------------------------------------------------------------------------


def section_wan(check: Check) -> dict:
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    park_scail2(check)
    s, device = check.sizes, check.device
    with init_empty_weights(include_buffers=False):  # parameters on meta, the RoPE buffers computed
        model = WanTransformer3DModel(**wan_config_like(s.preset))
    model = materialise(model, device, torch.bfloat16, model._keep_in_fp32_modules).eval()
    tokens = scail2_tokens(s.frames, s.height, s.width)
    latent = wan_latent_for(tokens, s.height, s.width)
    image = s.image_tokens if model.config.image_dim else 0
    inputs = wan_inputs(model, latent, s.text_tokens, image, device)
    with torch.no_grad():
        model(**inputs)  # warm-up
        reset_peak(device)
        seconds = min(timed(lambda: model(**inputs), device)[1] for _ in range(s.repeats))
    cfg = model.config
    dim = cfg.num_attention_heads * cfg.attention_head_dim
    flops = block_flops(dim, cfg.ffn_dim, cfg.num_layers, tokens, s.text_tokens, image, 1)
    rows = [speed_row(check, "diffusers Wan, bf16, native", 1, tokens, seconds, flops)]
    ours = check.report["sections"].get("transformer", {}).get("result", {}).get("rows", [])[:1]
    return {"latent": list(latent), "rows": rows, "table": speed_table(ours + rows)}


def wan_inputs(model, latent: tuple[int, int, int], text: int, image: int, device: torch.device) -> dict:
    """Random bf16 inputs of batch 1: a [in_channels, *latent] video (for i2v, noise and the image condition),
    text tokens and, for i2v, CLIP tokens."""
    cfg, generator = model.config, torch.Generator(device).manual_seed(0)
    shapes = {"hidden_states": (1, cfg.in_channels, *latent), "encoder_hidden_states": (1, text, cfg.text_dim)}
    if image:
        shapes["encoder_hidden_states_image"] = (1, image, cfg.image_dim)
    inputs = {
        name: torch.randn(shape, generator=generator, device=device).to(torch.bfloat16)
        for name, shape in shapes.items()
    }
    return {**inputs, "timestep": torch.full((1,), 500.0, device=device)}


def park_scail2(check: Check) -> None:
    """Move the SCAIL-2 model to the CPU (the segment section reuses it from there)."""
    if check.model is not None and check.device.type == "cuda":
        check.model.to("cpu")
        check.free()


# ------------------------------------------------------------------------------------------------------------
# 6. VAE decode
# ------------------------------------------------------------------------------------------------------------


def section_vae(check: Check) -> dict:
    from diffusers import AutoencoderKLWan

    park_scail2(check)
    s, device = check.sizes, check.device
    torch.manual_seed(0)
    vae = AutoencoderKLWan(**s.vae_config).to(device).eval()  # fp32, as the converted Wan VAE is stored
    frames, height, width = latent_grid(s.frames, s.height, s.width)
    latent = torch.randn(1, vae.config.z_dim, frames, height, width, device=device)
    rows, videos = [], {}
    for tiled in (False, True):
        vae.enable_tiling(**s.vae_tiles) if tiled else vae.disable_tiling()
        reset_peak(device)
        with torch.no_grad():
            video, seconds = timed(lambda: vae.decode(latent).sample, device)
        videos[tiled] = video.float().cpu()
        del video
        shape = list(videos[tiled].shape)
        rows.append({"tiled": tiled, "seconds": round(seconds, 3), "peak_gib": peak_gib(device), "output": shape})
        check.free()
    difference = (videos[True] - videos[False]).abs().max().item()
    header = ["decode", "frames", "s", "peak GiB"]
    body = [
        ["tiled" if r["tiled"] else "untiled", r["output"][2], fmt(r["seconds"], 3), fmt(r["peak_gib"])] for r in rows
    ]
    return {"rows": rows, "max_abs_tiled_vs_untiled": difference, "table": table(header, body)}


# ------------------------------------------------------------------------------------------------------------
# 7. One segment under a memory cap: fp8 + group offload
# ------------------------------------------------------------------------------------------------------------


def section_segment(check: Check) -> dict:
    try:
        from scail2.pipelines.memory import MemorySettings
    except ImportError as error:
        raise NotAvailable(f"scail2.pipelines.memory.MemorySettings ({error})") from None
    memory = MemorySettings(offload="group", cfg_mode="sequential", vae_tiling=True)
    try:
        transformer, kind = check.scail2_model("fp8"), "fp8"
    except NotAvailable:  # recorded by the fp8 section; the segment still measures the offload in bf16
        transformer, kind = check.scail2_model("bf16"), "bf16"
    transformer.to("cpu")
    check.free()
    pipe, call = segment_pipeline(check, transformer, memory)
    check.drop_model()  # the pipeline holds the transformer now
    with memory_cap(check) as cap_gib:
        reset_peak(check.device)
        step_ends: list[float] = []
        start = time.perf_counter()
        result = call(lambda *_: step_ends.append(time.perf_counter()) or {})
        total = time.perf_counter() - start
    steps = [b - a for a, b in zip([start, *step_ends], step_ends)]
    return segment_result(check, kind, memory, cap_gib, steps, total, result.timings)


def segment_pipeline(check: Check, transformer, memory):
    """A pipeline of the transformer and a random Wan VAE with the memory settings applied, and its call on
    random inputs of one segment (precomputed text and CLIP tokens: no encoders)."""
    from diffusers import AutoencoderKLWan

    from scail2.conditioning import AnimationInputs
    from scail2.pipelines.pipeline_scail2 import SamplingSettings, SCAIL2Pipeline

    s = check.sizes
    torch.manual_seed(0)
    pipe = SCAIL2Pipeline(transformer=transformer, vae=AutoencoderKLWan(**s.vae_config).eval())
    pipe.enable_memory_settings(memory, device=check.device)
    cfg, g = transformer.config, torch.Generator().manual_seed(0)
    inputs = AnimationInputs(
        reference=torch.rand(3, s.height, s.width, generator=g) * 2 - 1,
        reference_mask=torch.ones(3, s.height, s.width),
        driving=torch.randint(0, 255, (s.frames, s.height, s.width, 3), generator=g, dtype=torch.uint8),
        driving_masks=torch.zeros(s.frames, s.height, s.width, 3, dtype=torch.uint8),
    )
    settings = SamplingSettings(sampler="unipc", steps=s.segment_steps, guidance_scale=5.0, segment_length=s.frames)
    text = lambda: torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)  # noqa: E731
    image = torch.randn(1, s.image_tokens, cfg.image_dim, generator=g) if cfg.model_type == "i2v" else None

    def call(on_step_end):
        return pipe(
            inputs,
            settings,
            progress=False,
            prompt_embeds=text(),
            negative_prompt_embeds=text(),
            image_embeds=image,
            callback_on_step_end=on_step_end,
        )

    return pipe, call


class memory_cap:
    """`torch.cuda.set_per_process_memory_fraction` at the sizes' cap while open (nothing on a CPU)."""

    def __init__(self, check: Check):
        self.check = check

    def __enter__(self) -> float | None:
        device = self.check.device
        if device.type != "cuda":
            return None
        self.check.free()
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, self.check.sizes.memory_cap_gib * GiB / total), device)
        return self.check.sizes.memory_cap_gib

    def __exit__(self, *exc) -> None:
        if self.check.device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, self.check.device)


def segment_result(check: Check, kind, memory, cap_gib, steps: list[float], total: float, timings: dict) -> dict:
    steady = min(steps[1:]) if len(steps) > 1 else steps[0]
    # without offload, a sequential-guidance step is two batch-1 forwards of the same weights
    plain = no_offload_forward_seconds(check, kind)
    ratio = steady / (2 * plain) if plain else None
    result = {
        "transformer": kind,
        "memory": asdict(memory),
        "cap_gib": cap_gib,
        "steps": len(steps),
        "step_seconds": [round(x, 3) for x in steps],
        "total_seconds": round(total, 2),
        "timings": timings,
        "peak_gib": peak_gib(check.device),
        "step_vs_no_offload": round(ratio, 3) if ratio else None,
    }
    header = ["transformer", "offload", "cap GiB", "steps", "s / step (steady)", "vs no offload", "total s", "peak GiB"]
    row = [
        kind,
        memory.offload,
        fmt(cap_gib, 0),
        len(steps),
        fmt(steady, 3),
        fmt(ratio),
        fmt(total),
        fmt(result["peak_gib"]),
    ]
    return {**result, "table": table(header, [row])}


def no_offload_forward_seconds(check: Check, kind: str) -> float | None:
    """The batch-1 forward time of the `kind` weights without offload, from the fp8 or transformer section."""
    section = "fp8" if kind == "fp8" else "transformer"
    rows = check.report["sections"].get(section, {}).get("result", {}).get("rows", [])
    return rows[0]["seconds"] if rows else None


# ------------------------------------------------------------------------------------------------------------
# 8. One LoRA training step (only when named)
# ------------------------------------------------------------------------------------------------------------

LORA_TARGETS = ["q", "k", "v", "o", "ffn.0", "ffn.2"]


def section_multigpu(check: Check) -> dict:
    from benchmarks import multi_gpu

    check.drop_model()  # rank 0's process needs the first GPU's memory
    return multi_gpu.section(check.sizes, check.device, check.args.cpu_ranks)


def section_train(check: Check) -> dict:
    """Forward, backward and AdamW of LoRA adapters (fp32, every block linear) on the frozen bf16 model, with
    per-block activation checkpointing, as `scail2 train` runs a 14B fine-tune. Each step is timed (the first
    included: its one-time costs are small beside a step)."""
    from scail2.diffusion import flow_matching

    check.drop_model()  # a fresh bf16 model: the adapters stay on it, so it is dropped afterwards
    model = lora_model(check.scail2_model("bf16"), check.sizes.lora_rank)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, betas=(0.9, 0.95))
    inputs = scail2_inputs(check, model, 1)
    target = torch.randn_like(inputs["hidden_states"])

    def step():
        prediction = model(**inputs).sample
        loss = flow_matching.masked_velocity_loss(prediction.float(), target, torch.ones_like(target[:, :1])).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 0.1)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        reset_peak(check.device)
        seconds = [timed(step, check.device)[1] for _ in range(check.sizes.train_steps)]
    finally:
        check.drop_model()
    s, cfg = check.sizes, model.config
    tokens = scail2_tokens(s.frames, s.height, s.width)
    image = s.image_tokens if cfg.model_type == "i2v" else 0
    # model FLOPs: forward and a backward of twice its cost (the checkpointed recomputation not counted)
    flops = 3 * block_flops(cfg.dim, cfg.ffn_dim, cfg.num_layers, tokens, cfg.text_len, image, 1)
    row = speed_row(check, f"LoRA r{s.lora_rank}, checkpointing", 1, tokens, min(seconds), flops)
    row.update(trainable_params=sum(p.numel() for p in trainable), step_seconds=[round(x, 3) for x in seconds])
    return {"rows": [row], "table": speed_table([row])}


def lora_model(model, rank: int):
    from peft import LoraConfig

    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS))
    for name, param in model.named_parameters():
        if ".lora_" in name:
            param.data = param.data.float()
            param.requires_grad_(True)
    model.enable_gradient_checkpointing()
    return model.train()


# ------------------------------------------------------------------------------------------------------------
# Table and entry point
# ------------------------------------------------------------------------------------------------------------


def print_report(report: dict) -> None:
    meta = report["meta"]
    print(
        f"# gpu_check ({meta['mode']}): {meta.get('gpu', meta['device'])}, torch {meta['torch']}, "
        f"diffusers {meta['diffusers']}, {meta['tokens']:,} tokens"
    )
    for name, entry in report["sections"].items():
        print(f"\n## {name}: {entry['status']}" + (f" ({entry['seconds']} s)" if "seconds" in entry else ""))
        if entry["status"] == "ok":
            t = entry["result"]["table"]
            print("| " + " | ".join(t["header"]) + " |\n|" + "---|" * len(t["header"]))
            for row in t["rows"]:
                print("| " + " | ".join(fmt(v) for v in row) + " |")
        else:
            print(entry.get("error") or entry.get("reason") or "did not finish")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="JSON written after every section")
    parser.add_argument(
        "--sections",
        default=",".join(DEFAULT_SECTIONS),
        help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default: all but train)",
    )
    parser.add_argument("--cpu-tiny", "--dry-run", action="store_true", help="every section at tiny sizes on the CPU")
    parser.add_argument("--budget-s", type=float, default=285.0, help="start no section after this many seconds")
    parser.add_argument("--preset", help="SCAIL-2 preset of the model sections (default 14b, tiny with --cpu-tiny)")
    parser.add_argument("--frames", type=int, help="segment frames, 4n+1 (default 81)")
    parser.add_argument("--height", type=int, help="segment height, a multiple of 32 (default 512)")
    parser.add_argument("--width", type=int, help="segment width, a multiple of 32 (default 896)")
    parser.add_argument("--repeats", type=int, help="timed repeats of each forward (default 1)")
    parser.add_argument("--segment-steps", type=int, help="sampler steps of the segment section (default 2)")
    parser.add_argument("--lora-rank", type=int, help="LoRA rank of the train section (default 128)")
    parser.add_argument("--train-steps", type=int, help="timed steps of the train section (default 1)")
    parser.add_argument(
        "--cpu-ranks", type=int, default=0, help="with --cpu-tiny: run the multigpu section over this many CPU ranks"
    )
    parser.add_argument("--table", metavar="JSON", help="print the table of an earlier run's JSON and exit")
    args = parser.parse_args(argv)
    args.sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.table:
        report = json.loads(Path(args.table).read_text())
        print_report(report)
        return report
    if not args.cpu_tiny and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; run with --cpu-tiny to check the script on a CPU")
    sizes = tiny_sizes() if args.cpu_tiny else Sizes()
    for name in ("preset", "frames", "height", "width", "repeats", "segment_steps", "lora_rank", "train_steps"):
        if getattr(args, name) is not None:
            setattr(sizes, name, getattr(args, name))
    device = torch.device("cpu" if args.cpu_tiny else "cuda")
    check = Check(args, sizes, device)
    functions = {name: globals()[f"section_{name}"] for name in SECTIONS}
    for name in args.sections:
        check.run(name, functions[name])
    check.report["meta"]["total_seconds"] = round(check.elapsed(), 1)
    check.write()
    print_report(check.report)
    return check.report


if __name__ == "__main__":
    main()
