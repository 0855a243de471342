"""`scail2 convert`: official and third-party checkpoints -> diffusers-format folders."""

from __future__ import annotations

from scail2.commands.arguments import finite_float, int_range


def register(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="convert official checkpoints to diffusers-format folders")
    targets = parser.add_subparsers(dest="target", metavar="TARGET")
    targets.required = True

    transformer = targets.add_parser(
        "transformer",
        help="the SCAIL-2 DiT: SAT release checkpoint, Wan-style state dict or MLX layout (detected automatically)",
    )
    transformer.add_argument(
        "--input", required=True, help="checkpoint file (.pt, .pth, .safetensors incl. ComfyUI fp8_scaled, or .gguf)"
    )
    transformer.add_argument(
        "--config", required=True, help="a preset (14b, 1.3b, tiny) or an upstream-style config JSON (config-14b.json)"
    )
    transformer.add_argument("--out", required=True, help="output folder (config.json + safetensors shards)")
    transformer.add_argument(
        "--dtype",
        choices=["bf16", "fp16", "fp32", "fp8"],
        default="bf16",
        help="storage dtype; timestep, modulation and norm weights stay fp32 (default bf16). fp8: the block "
        "linears in float8 e4m3 with per-channel scales, the rest bf16. Block linears that the input holds "
        "quantised (GGUF, ComfyUI fp8_scaled) stay as they are",
    )
    transformer.add_argument(
        "--max-shard-size",
        type=finite_float(0, 1024, low_open=True),
        default=5.0,
        metavar="GB",
        help="shard size cap in GiB",
    )
    transformer.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    transformer.set_defaults(func=run_transformer)

    release = targets.add_parser("all", help="the whole official release folder -> one SCAIL2Pipeline folder")
    release.add_argument("--official-dir", required=True, help="the downloaded zai-org/SCAIL-2 folder")
    release.add_argument("--out", required=True, help="output pipeline folder")
    release.add_argument("--config", default="14b", help="transformer preset or upstream config JSON (default 14b)")
    release.add_argument(
        "--dtype", choices=["bf16", "fp16", "fp32", "fp8"], default="bf16", help="transformer storage dtype"
    )
    release.add_argument(
        "--clip-heads",
        type=int_range(1, 256),
        default=16,
        help="attention heads of the CLIP vision tower (not stored in its file; 16 for ViT-H/14)",
    )
    release.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    release.set_defaults(func=run_release)


def run_transformer(args) -> int:
    from scail2.commands.guards import convert_guard
    from scail2.models.convert import convert_transformer

    convert_guard(args, {"--input": args.input, "--config": args.config}, "config.json")
    check_safetensors_header(args.input)

    out = convert_transformer(
        args.input,
        args.config,
        args.out,
        dtype=args.dtype,
        max_shard_size_gb=args.max_shard_size,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0


def run_release(args) -> int:
    from scail2.commands.guards import convert_guard
    from scail2.models.convert_release import convert_release

    convert_guard(args, {"--official-dir": args.official_dir, "--config": args.config}, "model_index.json")

    out = convert_release(
        args.official_dir,
        args.out,
        config=args.config,
        dtype=args.dtype,
        overwrite=args.overwrite,
        clip_heads=args.clip_heads,
    )
    print(f"wrote {out}")
    return 0


def check_safetensors_header(path: str) -> None:
    """A `.safetensors` input whose header does not parse (empty, truncated, not safetensors) is refused in one
    line before the conversion starts."""
    from pathlib import Path

    from safetensors import SafetensorError, safe_open

    from scail2.errors import Scail2Error

    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return  # other formats are checked by their readers; a missing file by the converter
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as error:
        raise Scail2Error(
            f"--input {path}: not a readable safetensors file ({error}); it is empty, truncated or of another "
            "format: download it again"
        ) from None
