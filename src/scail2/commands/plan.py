"""`scail2 plan`: a job's GPU memory per phase and its host RAM, and the cheapest options that fit a card,
predicted from the model folder's configs before any weight is loaded."""

from __future__ import annotations

import argparse
import sys

from scail2.commands.arguments import MAX_SIDE, finite_float, four_n_plus_one, int_range

SIZE = int_range(32, MAX_SIDE, multiple_of=32)
POSITIVE = finite_float(0, None, low_open=True)

# The options `scail2 animate` takes; given here they are held fixed and the plan chooses the others.
OPTION_FLAGS = {
    "dtype": ("--dtype", ["bf16", "fp32"], "weights and compute precision (the plan never picks fp32 itself)"),
    "quantize": ("--quantize", ["none", "fp8"], "fp8: e4m3 block linears with per-channel scales"),
    "gguf": ("--gguf", ["Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K"], "plan for a GGUF transformer of this type"),
    "offload": ("--offload", ["none", "model", "group", "sequential"], "weights kept off the GPU until used"),
    "cfg_mode": ("--cfg-mode", ["batched", "sequential"], "guidance passes in one batch or one after the other"),
    "encoders": ("--encoders", ["offload", "cpu", "gpu"], "text/image encoders: leave the GPU after use, CPU, stay"),
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help="predict a job's GPU and host memory and pick the options that fit, before loading anything"
    )
    parser.add_argument(
        "--model",
        required=True,
        help="converted model folder, or an architecture to plan for before downloading it: 14b, 1.3b",
    )
    parser.add_argument("--height", type=SIZE, default=512, help="output height, a multiple of 32 (default 512)")
    parser.add_argument("--width", type=SIZE, default=896, help="output width, a multiple of 32 (default 896)")
    parser.add_argument(
        "--frames", type=int_range(1), default=81, help="driving frames of the whole video (default 81)"
    )
    parser.add_argument(
        "--gpu-memory",
        type=finite_float(0, None, low_open=True),
        nargs="+",
        metavar="GB",
        help="card size(s) in GiB, e.g. 24 48 80 (default: the free memory of the CUDA device)",
    )
    parser.add_argument(
        "--host-memory",
        type=finite_float(0, None, low_open=True),
        metavar="GB",
        help="host RAM to plan for (default: the free RAM "
        "when planning for this machine's GPU; unchecked with --gpu-memory)",
    )
    parser.add_argument("--preset", help="sampler preset of `scail2 animate` (its guidance decides the batch)")
    parser.add_argument("--cfg", type=finite_float(0, 100), help="text guidance scale (1: no unconditional pass)")
    parser.add_argument("--segment-length", type=four_n_plus_one(5), help="frames per segment (4n+1; default 81)")
    parser.add_argument(
        "--overlap", type=four_n_plus_one(1), default=5, help="history frames between segments (default 5)"
    )
    parser.add_argument("--extra-refs", type=int_range(0, 16), default=0, help="extra reference views")
    for flag, choices, description in OPTION_FLAGS.values():
        parser.add_argument(flag, choices=choices, help=f"{description}; chosen by the plan when left out")
    parser.add_argument(
        "--gpus",
        type=int_range(1, 4096),
        metavar="N",
        help="plan for N GPUs under torchrun: per-GPU memory, time and the scaling",
    )
    parser.add_argument("--shard-weights", action="store_true", help="with --gpus: weights split over the GPUs")
    parser.add_argument("--tflops", type=POSITIVE, default=400.0, help="with --gpus: effective TFLOP/s of one GPU")
    parser.add_argument("--link-gbs", type=POSITIVE, default=200.0, help="with --gpus: all-to-all GB/s per GPU")
    parser.add_argument(
        "--vae-tiling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode in tiles (--no-vae-tiling: never); chosen by the plan when left out",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from scail2.errors import Scail2Error
    from scail2.pipelines.memory_inventory import ModelFolder
    from scail2.pipelines.memory_plan import (
        GIB,
        JobShape,
        RunOptions,
        cards_table,
        choose_options,
        detected_gpu_bytes,
        detected_host_bytes,
        predict,
        usable_gpu_bytes,
    )
    from scail2.pipelines.pipeline_scail2 import SAMPLING_PRESETS

    folder = ModelFolder.read(args.model)
    if args.preset is not None and args.preset not in SAMPLING_PRESETS:
        raise Scail2Error(f"--preset {args.preset!r} is not one of {', '.join(SAMPLING_PRESETS)}")
    settings = SAMPLING_PRESETS[args.preset or "quality"]
    guidance = settings.guidance_scale if args.cfg is None else args.cfg
    job = JobShape(
        args.height,
        args.width,
        args.frames,
        segment_length=args.segment_length or settings.segment_length,
        overlap=args.overlap,
        extra_refs=args.extra_refs,
        guided=guidance > 1 and "text_encoder" in folder.components,
    )
    fixed = {name: getattr(args, name) for name in OPTION_FLAGS if getattr(args, name) is not None}
    if args.vae_tiling is not None:
        fixed["vae_tiling"] = args.vae_tiling
    host_budget = None if args.host_memory is None else int(args.host_memory * GIB)
    if args.gpus is not None:
        return _plan_gpus(args, folder, job, RunOptions(**fixed))
    if args.shard_weights:
        raise Scail2Error("--shard-weights plans weights split over several GPUs; give it with --gpus N")

    if not args.gpu_memory:
        budget = detected_gpu_bytes()
        if budget is None:
            print(predict(folder, job, RunOptions(**fixed)).table())
            print("no CUDA device found: nothing checked; give --gpu-memory GB to choose options for a card")
            return 0
        host_budget = detected_host_bytes() if host_budget is None else host_budget
        print(choose_options(folder, job, budget, host_budget, fixed).table())
        return 0
    if len(args.gpu_memory) == 1:
        print(choose_options(folder, job, usable_gpu_bytes(args.gpu_memory[0]), host_budget, fixed).table())
        return 0
    rows, refused = [], []
    for card in args.gpu_memory:
        try:
            rows.append((card, choose_options(folder, job, usable_gpu_bytes(card), host_budget, fixed)))
        except Scail2Error as error:
            rows.append((card, str(error)))
            refused.append(f"scail2 plan: {card:g} GiB: {error}")
    print(f"{folder.name}: {job.describe()}, {'guided' if job.guided else 'no guidance'}\n")
    print(cards_table(rows))
    for line in refused:
        print(line, file=sys.stderr)
    return 2 if refused else 0


def _plan_gpus(args, folder, job, options) -> int:
    from scail2.errors import Scail2Error
    from scail2.parallel.scaling import describe
    from scail2.pipelines.memory_plan import usable_gpu_bytes

    budget = usable_gpu_bytes(args.gpu_memory[0]) if args.gpu_memory else None
    try:
        text = describe(folder, job, options, args.gpus, args.shard_weights, budget, args.tflops, args.link_gbs)
    except Scail2Error as error:
        raise Scail2Error(f"--gpus {args.gpus}: {error}") from None
    print(text)
    return 0
