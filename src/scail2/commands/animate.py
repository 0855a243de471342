"""`scail2 animate` (and the `scail2 replace` shortcut): a reference image performs a driving video's motion."""

from __future__ import annotations

import os

from scail2.commands.arguments import MAX_SIDE, MAX_STEPS, device, finite_float, four_n_plus_one, int_range, seed
from scail2.commands.cues import add_face_detector_argument, require_face_detector

MAX_QA_RETRIES = 20  # each retry draws the segment again: more is a mistake, not a wish for quality


def _add_arguments(parser, mode_choice: bool) -> None:
    parser.add_argument("--ref", required=True, help="reference image (any size; RGBA alpha is used as its mask)")
    parser.add_argument("--driving", required=True, help="driving video (any container/codec PyAV reads)")
    parser.add_argument("--out", required=True, help="output .mp4 (a .json manifest is written beside it)")
    parser.add_argument("--driving-mask", help="driving masks: a video or a folder of PNGs, binary or palette")
    parser.add_argument("--ref-mask", help="reference mask image, binary or palette colours")
    parser.add_argument(
        "--cues", help="DirectAnimator models: a `scail2 cues` folder of the driving video (default: made here)"
    )
    add_face_detector_argument(parser)
    parser.add_argument("--prompt", default="", help="description of the output video (empty allowed)")
    parser.add_argument("--negative-prompt", default="", help="negative prompt for text guidance (default empty)")
    if mode_choice:
        parser.add_argument(
            "--mode",
            choices=["animate", "replace"],
            default="animate",
            help="animate: the character in its own scene; replace: inserted into the driving scene",
        )
    parser.add_argument("--model", help="converted model folder (default: the bundled demo model)")
    parser.add_argument(
        "--preset",
        choices=["quality", "fast", "distill"],
        help="sampler preset (default: quality, or the bundled model's own settings without --model); distill: "
        "4 Euler steps, shift 5, no guidance, for a step-distill LoRA given with --lora (e.g. lightx2v's "
        "Wan2.1-I2V-14B one); --sampler/--steps/--shift/--cfg/--segment-length/--overlap override its fields",
    )
    parser.add_argument("--sampler", choices=["unipc", "dpm++", "euler"])
    parser.add_argument("--steps", type=int_range(1, MAX_STEPS))
    parser.add_argument("--shift", type=finite_float(0, 100, low_open=True))
    parser.add_argument(
        "--cfg", type=finite_float(0, 100), help="text guidance scale (1 disables the unconditional pass)"
    )
    parser.add_argument("--seed", type=seed, default=0)
    size = int_range(32, MAX_SIDE, multiple_of=32)
    parser.add_argument("--height", type=size, help="output height, a multiple of 32 (with --width)")
    parser.add_argument("--width", type=size, help="output width, a multiple of 32 (with --height)")
    parser.add_argument("--max-frames", type=int_range(1), help="use at most this many driving frames")
    parser.add_argument(
        "--segment-length",
        type=four_n_plus_one(5),
        help="frames per segment (4n+1; default 81, 17 for the bundled model)",
    )
    parser.add_argument(
        "--overlap", type=four_n_plus_one(1), help="clean-history frames between segments (4n+1; default 5)"
    )
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:SCALE]",
        help="LoRA to apply (official SAT, Wan/ComfyUI/lightx2v or peft format); repeatable",
    )
    parser.add_argument(
        "--lora-mode",
        choices=["fused", "unfused"],
        default="fused",
        help="fused: added into the weights (no cost per step); unfused: kept beside them (a small cost per "
        "step; the LoRA keeps its precision on fp8/GGUF weights)",
    )
    parser.add_argument(
        "--extra-ref",
        action="append",
        default=[],
        metavar="IMG",
        help="an extra reference view (RGBA, alpha marks the character); repeatable",
    )
    parser.add_argument("--frames-dir", help="also write lossless PNG frames to this folder")
    parser.add_argument("--device", type=device, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--dtype",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="dtype the transformer and the text/image encoders are loaded in (their norms, modulation and "
        "timestep layers stay fp32; the VAE stays as stored, fp32 on CPU); auto: bf16 on GPU, fp32 on CPU",
    )
    parser.add_argument(
        "--attention",
        metavar="KERNEL",
        help="attention kernel: sdpa (default, PyTorch), flash, _flash_3, sage, flex, xformers or another "
        "diffusers backend; its package must be installed",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the transformer block with torch.compile (once, reused by every block; the first step is slower)",
    )
    parser.add_argument(
        "--cache",
        default="none",
        metavar="KIND",
        help="step cache, which skips transformer blocks on steps that change little: none (default) or "
        "fbc[:THRESHOLD] (First Block Cache; 0 skips nothing, larger skips more, default 0.1; not with --compile)",
    )
    parser.add_argument(
        "--quantize",
        choices=["fp8"],
        help="quantise the transformer's block linears while loading (fp8: e4m3 with per-channel scales, fp8 "
        "matmuls on GPUs with compute capability >= 8.9); folders written by `scail2 convert transformer "
        "--dtype fp8` or from GGUF files are quantised already",
    )
    _add_memory_arguments(parser)
    add_output_arguments(parser)


def add_output_arguments(parser) -> None:
    """Drift control, QA and alpha outputs (shared with `scail2 batch`, where they are job settings)."""
    parser.add_argument(
        "--handoff",
        choices=["pixel", "latent", "hybrid"],
        default="pixel",
        help="how a segment takes over the previous one's last frames: pixel (decoded frames encoded again, as "
        "upstream), latent (its clean latents, no VAE round trip), hybrid (first frame encoded, rest latents); "
        "docs/drift.md compares them",
    )
    parser.add_argument(
        "--color-anchor",
        type=finite_float(0, 1),
        default=0.0,
        metavar="BOUND",
        help="move each segment's character colour towards the reference's by at most BOUND per channel in "
        "[-1, 1] units (0.06 is about 8 of 255 levels; default 0: off)",
    )
    parser.add_argument(
        "--qa-retry",
        type=int_range(0, MAX_QA_RETRIES),
        default=0,
        metavar="N",
        help="draw a segment again with another seed, up to N times, when its character colour drifts or its "
        "seam jumps beyond the QA thresholds (README, 'QA of every output')",
    )
    parser.add_argument("--no-qa", dest="qa", action="store_false", help="skip the QA report (out.qa.json/.png)")
    parser.add_argument(
        "--alpha",
        action="store_true",
        help="also write the output's character masks (OUT_alpha/ PNGs), RGBA PNGs (OUT_rgba/) and a ProRes 4444 "
        "MOV with that alpha (OUT.alpha.mov)",
    )


def _add_memory_arguments(parser) -> None:
    """Where the job keeps weights and activations (scail2.pipelines.memory); none of them changes the video,
    except --vae-tiling within its blending."""
    parser.add_argument(
        "--offload",
        choices=["none", "model", "group", "sequential"],
        default="none",
        help="keep weights on the CPU and move them to the GPU: a whole component at a time (model), a transformer "
        "block at a time, the next prefetched (group), a layer at a time (sequential: smallest, slowest)",
    )
    parser.add_argument(
        "--cfg-mode",
        choices=["batched", "sequential", "auto"],
        default="auto",
        help="the two guidance passes as one batch, or one after the other (half the activations); auto: batched "
        "unless the GPU's free memory is below twice one pass's estimated activations",
    )
    parser.add_argument("--vae-tiling", action="store_true", help="decode in overlapping 256-px tiles (less memory)")
    parser.add_argument(
        "--encoders-on-cpu", action="store_true", help="run the text and image encoders on the CPU (never the GPU)"
    )
    parser.add_argument(
        "--no-memory-check",
        dest="memory_check",
        action="store_false",
        help="on a GPU, skip the memory plan that refuses a job the card cannot hold before loading (`scail2 plan`)",
    )
    parser.add_argument(
        "--shard-weights",
        action="store_true",
        help="under torchrun: split the transformer's weights over the ranks (FSDP2), for cards that cannot hold "
        "them whole; the ranks always share the work (guidance split over two, the tokens over the rest)",
    )


def register(subparsers) -> None:
    animate = subparsers.add_parser("animate", help="animate a reference character with a driving video")
    _add_arguments(animate, mode_choice=True)
    animate.set_defaults(func=run)
    replace = subparsers.add_parser("replace", help="shortcut for `animate --mode replace`")
    _add_arguments(replace, mode_choice=False)
    replace.set_defaults(func=run, mode="replace")


def run(args) -> int:
    from scail2 import bundled
    from scail2.animate import AnimateRequest, run_animate, sampling_settings
    from scail2.commands import require_text_dependencies
    from scail2.errors import Scail2Error
    from scail2.optional import require
    from scail2.parallel.layout import check_options, world_size_from_environment
    from scail2.pipelines.memory import MemorySettings

    require("av", purpose="reading the driving video and writing the output video")
    require_face_detector(args)
    check_options(
        world_size_from_environment(),
        cache=args.cache,
        compile=args.compile,
        offload=args.offload,
        shard_weights=args.shard_weights,
        quantize=args.quantize,
        lora_mode=args.lora_mode if args.lora else "fused",
    )
    require_text_dependencies(args.model)
    check_outputs(args)
    use_bundled = args.model is None
    if use_bundled and os.environ.get("RANK", "0") == "0":  # (under torchrun: said once)
        print(
            f"scail2 {args.command}: no --model, using the bundled {'x'.join(map(str, bundled.BUNDLED_SIZE))} "
            f"demo model ({bundled.bundled_model_dir()}); prompts and --cfg do not apply to it"
        )
    if args.preset == "distill" and not args.lora:
        print(
            f"scail2 {args.command}: --preset distill samples 4 steps without guidance, made for a step-distill "
            "LoRA (--lora FILE); without one the video comes out blurred"
        )
    settings = sampling_settings(
        args.preset,
        use_bundled,
        sampler=args.sampler,
        steps=args.steps,
        shift=args.shift,
        guidance_scale=args.cfg,
        segment_length=args.segment_length,
        overlap=args.overlap,
    )
    request = AnimateRequest(
        ref=args.ref,
        driving=args.driving,
        out=args.out,
        model=args.model,
        driving_mask=args.driving_mask,
        ref_mask=args.ref_mask,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        mode=args.mode,
        height=args.height,
        width=args.width,
        max_frames=args.max_frames,
        settings=settings,
        memory=MemorySettings(
            offload=args.offload,
            cfg_mode=args.cfg_mode,
            vae_tiling=args.vae_tiling,
            encoders_on_cpu=args.encoders_on_cpu,
        ),
        seed=args.seed,
        loras=args.lora,
        lora_mode=args.lora_mode,
        device=args.device,
        dtype=args.dtype,
        attention=args.attention,
        compile=args.compile,
        quantize=args.quantize,
        cache=args.cache,
        frames_dir=args.frames_dir,
        extra_refs=args.extra_ref,
        memory_check=args.memory_check,
        shard_weights=args.shard_weights,
        handoff=args.handoff,
        color_anchor=args.color_anchor,
        qa=args.qa,
        qa_retry=args.qa_retry,
        alpha=args.alpha,
        cues=args.cues,
        face_detector=args.face_detector,
    )
    if settings.overlap >= settings.segment_length:
        raise Scail2Error(
            f"--overlap {settings.overlap} must be shorter than --segment-length {settings.segment_length}"
        )
    manifest = run_parallel(request) if world_size_from_environment() > 1 else run_animate(request)
    if manifest is None:  # a rank other than 0 under torchrun
        return 0
    print(
        f"wrote {manifest['output']}: {manifest['frames']} frames at {manifest['fps']} fps "
        f"({manifest['timings_s']['wall_s']:.1f} s)"
    )
    if "qa" in manifest:
        report = manifest["qa"]
        warned = f": {', '.join(report['warnings'])}" if report["warnings"] else ""
        print(f"QA {report['status']}{warned} ({report['files']['json']})")
    return 0


def run_parallel(request):
    """One generation over torchrun's processes: every error stops every rank (`ParallelLayout`)."""
    from scail2.animate import run_animate
    from scail2.parallel import ParallelLayout

    layout = ParallelLayout.from_environment(request.device)
    with layout.failures_shared():
        manifest = run_animate(request, layout=layout)
    layout.finish()
    return manifest


def check_outputs(args) -> None:
    """Before any work: the outputs are none of the inputs, replace only earlier `animate` outputs and can be
    written (`scail2.outputs`)."""
    from scail2.commands.guards import animate_guard

    animate_guard(args)
