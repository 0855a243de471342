"""The multi-GPU section of `benchmarks.gpu_check`: one guided sampler step of the SCAIL-2 transformer over
every GPU of the machine (guidance split over two rank groups, Ulysses over the rest), against the same step on
one GPU, beside the plan's prediction (`scail2 plan --gpus N`).

With one GPU it reports that, and the prediction for 2, 4 and 8. The ranks are processes started here with
torch.multiprocessing (spawn on CUDA; fork on the CPU, where `ranks` > 1 runs the same code over gloo): each
builds the same random bf16 model (same seed), rank 0 first runs the one-GPU step (both passes in one batch),
then every rank runs its share; rank 0 compares the gathered velocities with the one-GPU ones (PSNR).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import torch

from benchmarks.common import build_inputs, materialise, timed

PREDICTED_GPUS = (1, 2, 4, 8)


def predicted_rows(preset: str, frames: int, height: int, width: int, gpus: int) -> list[list]:
    """The plan's layout, per-GPU peak and seconds per step for 1, 2, 4, 8 (and `gpus`) GPUs."""
    from scail2.parallel.scaling import scaling
    from scail2.pipelines.memory_inventory import REFERENCE_ARCHITECTURES, ModelFolder
    from scail2.pipelines.memory_plan import GIB, JobShape, RunOptions

    job = JobShape(height, width, frames, segment_length=frames)
    folder = ModelFolder.read(preset if preset in REFERENCE_ARCHITECTURES else "14b")  # (tiny: the 14B's plan)
    plans = scaling(folder, job, RunOptions(), max(gpus, PREDICTED_GPUS[-1]))
    base = plans[0].step_s
    return [
        [p.layout.gpus, p.layout.label(), round(p.peak / GIB, 2), round(p.step_s, 4), round(base / p.step_s, 2)]
        for p in plans
    ]


def rank_main(rank: int, world: int, port: int, preset: str, shape: tuple, out: str, device_type: str) -> None:
    """One rank: the one-GPU step on rank 0, then this rank's share of the parallel step; rank 0 writes JSON."""
    from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel
    from scail2.parallel import ParallelLayout, UlyssesAttention

    frames, height, width, text_tokens, repeats = shape
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    if device_type == "cpu":
        # forked from a process whose OpenMP pool may be running: a forked child that opens a parallel region of
        # its own waits forever for the parent's threads, so CPU ranks stay on one thread (they share the cores)
        torch.set_num_threads(1)
    layout = ParallelLayout.from_environment(device_type)
    device = layout.device
    torch.manual_seed(0)  # the same weights and inputs on every rank
    with torch.device("meta"):
        model = SCAIL2Transformer3DModel.from_preset(preset)
    model = materialise(model, device, torch.bfloat16, model._keep_in_fp32_modules).eval()
    inputs, _ = build_inputs(model, 2, frames, height, width, device, min(text_tokens, model.config.text_len))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    result = {"gpus": world}
    with torch.no_grad(), autocast:
        if layout.is_main:  # the one-GPU step: both guidance passes in one batch
            model(**inputs)
            runs = [timed(lambda: model(**inputs).sample.float(), device) for _ in range(repeats)]
            reference, result["one_gpu_s"] = runs[-1][0].cpu(), min(seconds for _, seconds in runs)
        layout.make_groups(model.config.num_heads, guided=True)
        if layout.ulysses > 1:
            model.enable_sequence_parallel(UlyssesAttention(layout.ulysses_group, model.config.num_heads))
        own = {name: value[layout.cfg_index :: layout.cfg] for name, value in inputs.items()}
        step = layout.gather_guidance(lambda latent, t: model(**own).sample.float())
        step(None, None)  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        runs = [timed(lambda: step(None, None), device) for _ in range(repeats)]
    if layout.is_main:
        output = runs[-1][0].cpu()
        result.update(
            layout=f"{layout.cfg} CFG x {layout.ulysses} Ulysses",
            parallel_s=min(seconds for _, seconds in runs),
            max_abs_error=(output - reference).abs().max().item(),
            psnr_db=_psnr(output, reference),
            peak_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        )
        result["speed_up"] = result["one_gpu_s"] / result["parallel_s"]
        Path(out).write_text(json.dumps(result))
    layout.finish()


def _psnr(output: torch.Tensor, reference: torch.Tensor) -> float:
    mse = ((output - reference) ** 2).mean().item()
    peak = (reference.max() - reference.min()).item()
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def measure(ranks: int, preset: str, shape: tuple, device_type: str) -> dict:
    """Run `rank_main` on `ranks` processes; rank 0's JSON."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "multi_gpu.json")
        method = "spawn" if device_type == "cuda" else "fork"  # CUDA cannot be forked into
        args = (ranks, port, preset, shape, out, device_type)
        mp.start_processes(rank_main, args=args, nprocs=ranks, join=True, start_method=method)
        return json.loads(Path(out).read_text())


def section(sizes, device: torch.device, cpu_ranks: int = 0) -> dict:
    """The section's result: the measurement when there are several GPUs (or `cpu_ranks` > 1), the prediction."""
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    predicted = predicted_rows(sizes.preset, sizes.frames, sizes.height, sizes.width, gpus)
    header = ["GPUs", "layout", "predicted GPU peak GiB", "predicted s / step", "predicted speed-up"]
    result = {"gpus": gpus, "predicted": predicted, "table": {"header": header, "rows": predicted}}
    ranks = gpus if gpus > 1 else cpu_ranks
    if ranks <= 1:
        result["note"] = f"{gpus} GPU(s) here: nothing to measure across GPUs; the plan's prediction only"
        return result
    shape = (sizes.frames, sizes.height, sizes.width, sizes.text_tokens, sizes.repeats)
    measured = measure(ranks, sizes.preset, shape, "cuda" if gpus > 1 else "cpu")
    result["measured"] = measured
    result["table"]["header"] += ["measured s / step", "measured speed-up", "PSNR dB vs one GPU", "rank 0 peak GiB"]
    for row in predicted:
        if row[0] == 1:
            row += [round(measured["one_gpu_s"], 4), 1.0, "-", "-"]
        elif row[0] == ranks:
            peak = measured["peak_gib"]
            speed = [round(measured["parallel_s"], 4), round(measured["speed_up"], 2), round(measured["psnr_db"], 1)]
            row += [*speed, "-" if peak is None else round(peak, 2)]
        else:
            row += ["-", "-", "-", "-"]
    return result
