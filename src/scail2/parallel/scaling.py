"""The memory plan and the speed of one job over N GPUs, predicted before anything is loaded (`scail2 plan
--gpus N`).

Memory per GPU: the one-GPU plan (scail2.pipelines.memory_plan) with the denoise phase redone for one rank's
share: its guidance pass (batch 1 when guidance is split), its S/u tokens (Ulysses: the keys and values it
gathers, [S, dim/u], are as large as its own [S/u, dim]), plus the all-to-all send and receive buffers and the
whole sequence gathered before the head; with weight sharding, 1/N of the transformer resident plus the two
blocks FSDP holds gathered (the running one and the prefetched one).

Host RAM per process: the one-GPU plan's (every rank loads the encoders and the VAE itself), except that with
weight sharding the transformer is loaded sharded (scail2.parallel.sharded_load): a rank's rows of one weight
at a time pass through its host memory on their way to the GPU, instead of the whole model.

Time per sampler step: the transformer's matmul and attention FLOPs over an effective throughput (`tflops`),
divided between the ranks, plus the all-to-all bytes of q, k, v and the output of every block over the
interconnect (`link_gbs`), which sit on the critical path; FSDP's weight gathers are prefetched behind the
compute, and the guidance gather moves one latent. The rest of a job (encoders, VAE) runs on every rank as
on one GPU. Both throughputs are assumptions to replace with `benchmarks.gpu_check`'s measurements.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from scail2.errors import Scail2Error
from scail2.parallel.layout import grid_shape
from scail2.pipelines.memory_activations import COMPUTE_BYTES, TokenCounts, transformer_forward_bytes
from scail2.pipelines.memory_inventory import ModelFolder
from scail2.pipelines.memory_plan import (
    GIB,
    JobShape,
    MemoryPlan,
    Phase,
    RunOptions,
    detected_gpu_bytes,
    gib,
    predict,
    transformer_sizes,
)

# An H100 SXM running the 14B blocks in bf16 at ~40% of its 989 TFLOP/s datasheet peak, and the all-to-all
# bandwidth per GPU NVLink 4 sustains between 8 GPUs (of 450 GB/s each way).
DEFAULT_TFLOPS = 400.0
DEFAULT_LINK_GBS = 200.0


@dataclass(frozen=True)
class Layout:
    gpus: int
    cfg: int
    ulysses: int
    shard_weights: bool

    def label(self) -> str:
        parts = [f"{self.cfg} CFG x {self.ulysses} Ulysses"]
        if self.shard_weights:
            parts.append("sharded weights")
        return ", ".join(parts)


def local_tokens(tokens: TokenCounts, ulysses: int) -> TokenCounts:
    """One rank's share of the sequence (padded up): the same total a rank holds, spread over the streams."""
    if ulysses == 1:
        return tokens
    share = -(-tokens.total // ulysses)
    cues = -(-tokens.cues // ulysses)
    return TokenCounts(extra_refs=0, reference=0, video=share, driving=0, context=tokens.context, cues=cues)


def block_flops(config: dict, tokens: TokenCounts) -> float:
    """Matmul and attention FLOPs of one block for one sample: projections, FFN, the context's keys and values,
    self-attention over S tokens and cross-attention to the context."""
    dim, ffn, s, context = config["dim"], config["ffn_dim"], tokens.total, tokens.context
    linears = 2 * s * (6 * dim * dim + 2 * dim * ffn) + 4 * dim * dim * context
    attention = 4 * s * s * dim + 4 * s * context * dim
    return float(linears + attention)


def all_to_all_bytes(config: dict, tokens: TokenCounts, ulysses: int, precision: str) -> float:
    """Bytes one rank sends per block and sample: q, k, v and the output, (u-1)/u of each [S/u, dim]."""
    if ulysses == 1:
        return 0.0
    share = -(-tokens.total // ulysses)
    return 4 * share * config["dim"] * COMPUTE_BYTES[precision] * (ulysses - 1) / ulysses


def sharded_load_host_bytes(sizes, gpus: int) -> int:
    """Host bytes the sharded load of the transformer holds at once on each rank: its rows of the largest weight
    (read into host memory, then sent to the GPU)."""
    return -(-sizes.largest_leaf // gpus)


@dataclass
class ParallelPlan:
    """One layout's per-GPU memory plan and predicted seconds per sampler step."""

    layout: Layout
    plan: MemoryPlan
    step_s: float

    @property
    def peak(self) -> int:
        return self.plan.peak


def parallel_plan(
    folder: ModelFolder,
    job: JobShape,
    options: RunOptions,
    gpus: int,
    shard_weights: bool = False,
    tflops: float = DEFAULT_TFLOPS,
    link_gbs: float = DEFAULT_LINK_GBS,
) -> ParallelPlan:
    """The plan of `job` over `gpus` ranks (guidance split when guided and `gpus` is even, see `grid_shape`)."""
    cfg = folder.transformer.config
    guided_cfg, ulysses = grid_shape(gpus, cfg["num_heads"], job.guided)
    layout = Layout(gpus, guided_cfg, ulysses, shard_weights and gpus > 1)
    if layout.shard_weights and options.offload != "none":
        raise Scail2Error(
            f"--shard-weights keeps each rank's share of the weights on its GPU; drop --offload {options.offload}"
        )
    one = predict(folder, job, options)
    precision = "fp32" if options.dtype == "fp32" else "bf16"
    passes = 2 if job.guided else 1
    batch_one = passes if options.cfg_mode == "batched" else 1
    batch = batch_one if guided_cfg == 1 else 1
    tokens = one.tokens
    mine = local_tokens(tokens, ulysses)
    sizes = transformer_sizes(folder.transformer, options)
    resident = sizes.total
    if layout.shard_weights:
        resident = -(-sizes.total // gpus) + 2 * sizes.largest_block
    unit = cfg["dim"] * 4 * batch
    extra = 0 if ulysses == 1 else unit * tokens.total + 2 * unit * mine.total  # gathered stream, a2a buffers
    forward_one = transformer_forward_bytes(cfg, tokens, batch_one, precision)
    forward_mine = transformer_forward_bytes(cfg, mine, batch, precision) + extra
    phases = []
    for phase in one.phases:
        weights = phase.weights - (sizes.total - resident if phase.weights >= sizes.total else 0)
        activations = phase.activations
        if phase.name == "denoise":
            activations = phase.activations - forward_one + forward_mine
        phases.append(Phase(phase.name, weights, activations))
    host = one.host
    if layout.shard_weights:
        host = one.host - sizes.total + sharded_load_host_bytes(sizes, gpus)
    plan = dataclasses.replace(one, phases=phases, host=host)
    # the matmuls split by tokens, the attention by heads: each rank does 1/u of one pass
    compute = cfg["num_layers"] * block_flops(cfg, tokens) / ulysses / (tflops * 1e12)
    exchange = cfg["num_layers"] * all_to_all_bytes(cfg, tokens, ulysses, precision) / (link_gbs * 1e9)
    step_s = (passes // guided_cfg) * (compute + exchange)
    return ParallelPlan(layout, plan, step_s)


def scaling(
    folder: ModelFolder,
    job: JobShape,
    options: RunOptions,
    max_gpus: int,
    shard_weights: bool = False,
    tflops: float = DEFAULT_TFLOPS,
    link_gbs: float = DEFAULT_LINK_GBS,
) -> list[ParallelPlan]:
    """Plans for 1, 2, 4, ... up to `max_gpus` GPUs (and `max_gpus` itself), leaving out counts whose
    sequence-parallel size does not divide the heads."""
    counts = sorted({n for n in (1, 2, 4, 8, 16, 32, 64) if n <= max_gpus} | {max_gpus})
    plans = []
    for n in counts:
        try:
            plans.append(parallel_plan(folder, job, options, n, shard_weights, tflops, link_gbs))
        except Scail2Error:
            continue
    return plans


def scaling_table(plans: list[ParallelPlan], gpu_budget: int | None = None) -> str:
    """One row per GPU count: layout, per-GPU peak and denoise memory, host RAM per process, seconds per step,
    speed-up over one GPU."""
    base = plans[0].step_s if plans and plans[0].layout.gpus == 1 else None
    lines = [
        "| GPUs | layout | GPU peak GiB (each) | denoise GiB | host RAM GiB (each) | s / step | speed-up |"
        + (" fits |" if gpu_budget else ""),
        "|---:|---|---:|---:|---:|---:|---:|" + ("---|" if gpu_budget else ""),
    ]
    for p in plans:
        denoise = next(phase.total for phase in p.plan.phases if phase.name == "denoise")
        speed = f"{base / p.step_s:.2f}x" if base else "-"
        memory = f"{p.peak / GIB:.1f} | {denoise / GIB:.1f} | {p.plan.host / GIB:.1f}"
        row = f"| {p.layout.gpus} | {p.layout.label()} | {memory} | {p.step_s:.2f} | {speed} |"
        if gpu_budget:
            row += " yes |" if p.peak <= gpu_budget else " no |"
        lines.append(row)
    return "\n".join(lines)


def describe(
    folder: ModelFolder,
    job: JobShape,
    options: RunOptions,
    gpus: int,
    shard_weights: bool,
    gpu_budget: int | None = None,
    tflops: float = DEFAULT_TFLOPS,
    link_gbs: float = DEFAULT_LINK_GBS,
) -> str:
    """`scail2 plan --gpus N`: the per-GPU plan for N GPUs, then the scaling table up to N."""
    chosen = parallel_plan(folder, job, options, gpus, shard_weights, tflops, link_gbs)
    chosen.plan.gpu_budget = gpu_budget
    head = f"per GPU with {gpus} GPUs ({chosen.layout.label()}):"
    note = (
        f"time: transformer FLOPs at {tflops:g} TFLOP/s per GPU and all-to-all at {link_gbs:g} GB/s per GPU "
        "(--tflops, --link-gbs); encoders and VAE not counted"
    )
    table = scaling_table(scaling(folder, job, options, gpus, shard_weights, tflops, link_gbs), gpu_budget)
    return "\n".join([head, chosen.plan.table(), "", table, "", note])


def check_parallel_fits(
    model_dir, job: JobShape, options: RunOptions, gpus: int, shard_weights: bool, gpu_budget: int | None = None
) -> ParallelPlan:
    """The per-GPU plan of a job over `gpus` ranks, checked against `gpu_budget` usable bytes (default: this
    rank's GPU, as detected); a one-line Scail2Error that says what would fit when it does not."""
    folder = model_dir if isinstance(model_dir, ModelFolder) else ModelFolder.read(model_dir)
    budget = detected_gpu_bytes() if gpu_budget is None else gpu_budget
    plan = parallel_plan(folder, job, options, gpus, shard_weights)
    if budget is None or plan.peak <= budget:
        return plan
    hint = "use more GPUs or a smaller --height/--width"
    if not shard_weights:
        sharded = parallel_plan(folder, job, options, gpus, shard_weights=True)
        if sharded.peak <= budget:
            hint = f"add --shard-weights ({gib(sharded.peak)} GiB per GPU)"
    return _refuse(folder, job, plan, budget, hint)


def _refuse(folder: ModelFolder, job: JobShape, plan: ParallelPlan, budget: int, hint: str):
    raise Scail2Error(
        f"{folder.name}: {job.describe()} over {plan.layout.gpus} processes ({plan.layout.label()}) needs "
        f"{gib(plan.peak)} GiB per GPU but {gib(budget)} GiB is usable; {hint} "
        f"(`scail2 plan --gpus {plan.layout.gpus}` shows the plan)"
    )
