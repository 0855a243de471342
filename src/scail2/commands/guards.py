"""Each command's output check, called once before any work (the rules live in `scail2.outputs`).

A guard lists the command's inputs (flag -> path) and checks each output against them. A new input or output flag
adds one entry here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from scail2.data.format import PARTIAL_NAME
from scail2.errors import Scail2Error
from scail2.outputs import OutputGuard, check_free_space, check_unlocked, real

FRAME_NAME = re.compile(r"frame_\d{6}\.png")
RUN_HINT = "pass --resume to continue it, or --overwrite to start again (its checkpoints are deleted)"


MAX_IMAGE_PIXELS = 1 << 26  # 8192 x 8192: far beyond any model size; larger files are mistakes or bombs


def check_image_size(flag: str, path) -> None:
    """A reference or mask image whose header declares more than MAX_IMAGE_PIXELS is refused before it is decoded
    (a few kilobytes of PNG can decode to gigabytes). Unreadable files are left to the image loader's errors."""
    if path is None or not Path(path).is_file():
        return
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError:  # PIL's own limit, larger than ours
        width = height = None
    except (OSError, ValueError, SyntaxError):
        return
    if width is None or width * height > MAX_IMAGE_PIXELS:
        declared = "" if width is None else f" ({width}x{height})"
        raise Scail2Error(
            f"{flag} {path}: the image declares more pixels{declared} than scail2 decodes (8192x8192); resize it first"
        )


def check_driving_video(flag: str, path) -> None:
    """A still image given as the driving video is refused before any work (one frame moves nothing). Files that
    cannot be opened are left to the video reader's errors."""
    if path is None or not Path(path).is_file():
        return
    import av

    try:
        with av.open(str(path)) as container:
            kind = container.format.name
    except (av.error.FFmpegError, UnicodeDecodeError, OSError):
        return
    if kind == "image2" or kind.endswith("_pipe"):
        raise Scail2Error(f"{flag} {path} is a still image ({kind.removesuffix('_pipe')}); give a video of the motion")


ASPECT_TOLERANCE = 0.02  # masks whose width/height differs more than this from the video's are another framing


def _mask_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of a mask source from its header: a video, a `scail2 masks` folder or a folder of PNGs."""
    from PIL import Image

    from scail2.preprocess import video_io

    if path.is_dir():
        meta = _json(path / "meta.json")
        if isinstance(meta, dict) and "width" in meta and "height" in meta:
            return int(meta["width"]), int(meta["height"])
        first = next(iter(sorted(path.glob("*.png"))), None)
        if first is None:
            return None
        with Image.open(first) as image:
            return image.size
    info = video_io.probe_video(path)
    return info.width, info.height


def check_mask_aspect(masks, video) -> None:
    """Refuse driving masks framed differently from the driving video: resized to the video they would be
    cropped, and the characters would no longer line up."""
    if masks is None or not Path(masks).exists() or not Path(video).is_file():
        return
    from scail2.preprocess import video_io

    try:
        mask_size = _mask_size(Path(masks))
        info = video_io.probe_video(video)
    except (Scail2Error, OSError, ValueError):
        return  # unreadable files get the loaders' own errors
    if mask_size is None or not info.width or not info.height:
        return
    mask_ratio, video_ratio = mask_size[0] / mask_size[1], info.width / info.height
    if abs(mask_ratio - video_ratio) > ASPECT_TOLERANCE * video_ratio:
        raise Scail2Error(
            f"--driving-mask {masks} is {mask_size[0]}x{mask_size[1]} but --driving {video} is "
            f"{info.width}x{info.height}, another aspect ratio; make the masks from this video (`scail2 masks`)"
        )


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _has_meta(path: Path) -> bool:
    """A dataset-style folder (synth, prefs, cache, masks): its meta.json says what wrote it, and each writer
    checks the format and settings before resuming; a folder of nothing but temporaries is a killed first run's."""
    if isinstance(_json(path / "meta.json"), dict):
        return True
    return all(PARTIAL_NAME.fullmatch(entry.name) or entry.name.endswith(".partial") for entry in path.iterdir())


def _frames_folder(path: Path) -> bool:
    return all(FRAME_NAME.fullmatch(entry.name) for entry in path.iterdir())


def _run_folder(path: Path) -> bool:
    """A training run folder from before the marker: config.json and checkpoints/ or metrics.jsonl."""
    return (path / "config.json").is_file() and ((path / "checkpoints").is_dir() or (path / "metrics.jsonl").exists())


def lora_path(spec: str) -> str:
    """FILE[:SCALE] -> FILE, split as `--lora` itself is."""
    from scail2.models.lora import parse_lora_arg

    return str(parse_lora_arg(spec).path)


# ------------------------------------------------------------------------------------------------------------


def animate_guard(args) -> None:
    inputs = {
        "--ref": args.ref,
        "--driving": args.driving,
        "--driving-mask": args.driving_mask,
        "--ref-mask": args.ref_mask,
        "--model": args.model,
        "--cues": getattr(args, "cues", None),
        **{f"--extra-ref {p}": p for p in args.extra_ref},
        **{f"--lora {spec}": lora_path(spec) for spec in args.lora},
    }
    for flag in ("--ref", "--ref-mask", *(f"--extra-ref {p}" for p in args.extra_ref)):
        check_image_size(flag.split()[0], inputs[flag])
    check_driving_video("--driving", args.driving)
    check_mask_aspect(args.driving_mask, args.driving)
    guard = OutputGuard(args.command, inputs)
    out = Path(args.out)
    manifest = out.with_suffix(".json")
    if out.suffix.lower() != ".mp4":
        raise Scail2Error(f"--out {out}: the output must be an .mp4 file")

    def our_manifest(path: Path) -> bool:
        data = _json(path)
        return isinstance(data, dict) and Path(str(data.get("output", ""))).name == out.name

    guard.file("--out", out, ours=lambda _: our_manifest(manifest))
    guard.file("--out (its manifest)", manifest, ours=our_manifest)
    guard.folder("--frames-dir", args.frames_dir, reuse=True, ours=_frames_folder)
    _side_outputs_guard(guard, args, out, lambda _: our_manifest(manifest))
    if args.frames_dir is not None and real(args.frames_dir) in real(out).parents:
        raise Scail2Error(
            f"--out {out} lies inside --frames-dir {args.frames_dir}, which is replaced; write it elsewhere"
        )


def _side_outputs_guard(guard: OutputGuard, args, out: Path, ours_beside) -> None:
    """The files `animate` writes beside --out (QA report, alpha outputs) replace only earlier ones of this output:
    the alpha folders hold nothing but their numbered PNGs, the files sit beside this output's manifest."""
    if getattr(args, "qa", True):
        for suffix in (".qa.json", ".qa.png"):
            guard.file(f"--out (its QA report {out.stem}{suffix})", out.with_name(out.stem + suffix), ours=ours_beside)
    if getattr(args, "alpha", False):
        guard.folder("--alpha", out.with_name(out.stem + "_alpha"), reuse=True, ours=_numbered_pngs("mask"))
        guard.folder("--alpha", out.with_name(out.stem + "_rgba"), reuse=True, ours=_numbered_pngs("frame"))
        guard.file("--alpha", out.with_name(out.stem + ".alpha.mov"), ours=ours_beside)


def _numbered_pngs(prefix: str):
    pattern = re.compile(rf"{prefix}_\d{{6}}\.png")
    return lambda path: all(pattern.fullmatch(entry.name) for entry in path.iterdir())


def cues_guard(args) -> None:
    """`cues`: --masks is a `scail2 masks` folder; --out is no input and replaces only an earlier cue folder."""
    masks = Path(args.masks)
    if not masks.is_dir():
        what = "is a file" if masks.exists() else "does not exist"
        raise Scail2Error(f"--masks {masks} {what}; give the folder `scail2 masks` wrote for --driving")
    if not isinstance(_json(masks / "meta.json"), dict):
        raise Scail2Error(f"--masks {masks} has no readable meta.json; give the folder `scail2 masks` wrote")
    if not Path(args.driving).is_file():
        raise Scail2Error(f"--driving {args.driving} is not a file; give the driving video")
    check_driving_video("--driving", args.driving)

    def cue_folder(path: Path) -> bool:
        meta = _json(path / "meta.json")
        return isinstance(meta, dict) and meta.get("format") == "scail2-cues"

    guard = OutputGuard("cues", {"--driving": args.driving, "--masks": args.masks})
    guard.folder("--out", args.out, reuse=args.overwrite, ours=cue_folder)


def run_folder_guard(args, command: str) -> None:
    """`train` / `train-vae`: a run folder is continued with --resume/--export-only, replaced with --overwrite."""
    overwrite = getattr(args, "overwrite", False)
    if overwrite and (args.resume or args.export_only):
        raise Scail2Error("--overwrite starts the run again; it cannot go with --resume or --export-only")
    data = args.data if isinstance(args.data, list) else [args.data]  # `train` takes several caches
    for folder in data:
        check_input_folder("--data", folder, "cache" if command == "train" else "synth")
    continuing = "--resume" if args.resume else "--export-only" if args.export_only else None
    if continuing and not Path(args.out).exists():
        raise Scail2Error(
            f"{continuing}: --out {args.out} does not exist: no checkpoint to resume from; drop {continuing} to start"
        )
    evaluation = getattr(args, "eval", None)
    if evaluation is not None and not isinstance(_json(Path(evaluation) / "meta.json"), dict):
        what = _not_a_folder(evaluation) or "has no meta.json"
        raise Scail2Error(f"--eval {evaluation} {what}; give a held-out folder written by `scail2 synth`")
    if args.config is not None and Path(args.config).is_dir():
        raise Scail2Error(f"--config {args.config} is a folder; give a YAML or JSON config file")
    inputs = {"--data": data[0]} if len(data) == 1 else {f"--data[{i + 1}]": folder for i, folder in enumerate(data)}
    inputs |= {"--config": args.config, "--eval": getattr(args, "eval", None)}
    guard = OutputGuard(command, inputs)
    reuse = args.resume or args.export_only or overwrite
    guard.folder("--out", args.out, reuse=reuse, ours=_run_folder, hint=RUN_HINT)
    if os.environ.get("RANK", "0") == "0":  # under torchrun the main process takes the lock; the others follow it
        check_unlocked("--out", args.out)


def check_input_folder(flag: str, path, writer: str) -> None:
    """An input that must be a folder (a dataset, a cache) given as a file is refused before anything loads."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise Scail2Error(f"{flag} {path} is a file; give the folder written by `scail2 {writer}`")


def dataset_guard(args, command: str, inputs: dict) -> None:
    """`synth`, `prefs`, `cache`: an unfinished folder of the same command is resumed (its meta.json is checked
    against the run's settings by the writer)."""
    check_input_folder("--data", inputs.get("--data"), "synth")
    OutputGuard(command, inputs).folder("--out", args.out, reuse=True, ours=_has_meta)


def masks_guard(args) -> None:
    inputs = {
        "--driving": args.driving,
        "--ref": args.ref,
        "--driving-mask": args.driving_mask,
        "--ref-mask": args.ref_mask,
        "--sam2-model": args.sam2_model,
    }
    for flag in ("--ref", "--ref-mask"):
        check_image_size(flag, inputs[flag])
    check_driving_video("--driving", args.driving)
    check_mask_aspect(args.driving_mask, args.driving)
    OutputGuard("masks", inputs).folder("--out", args.out, reuse=args.overwrite, ours=_has_meta)


def convert_guard(args, inputs: dict, marker_file: str) -> None:
    """`convert`: --overwrite replaces only a folder an earlier conversion wrote (`marker_file` in it). Converting
    such a folder's own weights again in place is allowed: the input is read whole before the folder is replaced."""
    out = Path(args.out)
    if args.overwrite and (out / marker_file).is_file():
        inputs = {flag: value for flag, value in inputs.items() if real(out) not in real(value).parents}
    OutputGuard("convert", inputs).folder(
        "--out", args.out, reuse=args.overwrite, ours=lambda path: (path / marker_file).is_file()
    )
    source = Path(inputs.get("--input") or "")
    if source.is_file():  # at least input_bytes / 4 parameters (an fp32 input), at the output dtype's width
        width = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}[args.dtype]
        check_free_space("--out", out, source.stat().st_size // 4 * width)


def _not_a_folder(path) -> str:
    """Why `path` is no folder ("is a file", "does not exist"), or "" for a folder."""
    return "is a file" if Path(path).is_file() else "" if Path(path).is_dir() else "does not exist"


def check_model_folder(flag: str, path) -> None:
    """A converted model folder (its model_index.json), checked before any output folder is made."""
    if path is None or (Path(path) / "model_index.json").is_file():
        return
    what = _not_a_folder(path) or "has no model_index.json"
    raise Scail2Error(f"{flag} {path} {what}; give a folder written by `scail2 convert all` (or leave {flag} out)")


def eval_guard(args) -> None:
    check_model_folder("--model", args.model)
    check_model_folder("--directanimator-model", getattr(args, "directanimator_model", None))
    inputs = {"--model": args.model, "--skeleton-model": None if args.skeleton_model == "none" else args.skeleton_model}
    inputs["--directanimator-model"] = getattr(args, "directanimator_model", None)
    guard = OutputGuard("eval", inputs)
    guard.file("--json", args.json, ours=lambda path: isinstance(_json(path), dict) and "summary" in _json(path))
    guard.folder("--report-dir", args.report_dir, reuse=True, ours=_report_files_ours)
    if args.readme is not None:
        guard.file("--readme", args.readme)


def _report_files_ours(folder: Path) -> bool:
    """A report folder may hold anything (docs/benchmark holds pages written by hand); only the two files a report
    replaces must be its own: table.md names `scail2 eval` in its first paragraph, and plot.png goes with it."""
    table, plot = folder / "table.md", folder / "plot.png"
    if (table.exists() and not table.is_file()) or (plot.exists() and not plot.is_file()):
        return False
    if table.is_file():
        return "`scail2 eval " in table.read_text(errors="replace").split("\n\n")[0]
    return not plot.exists()


def demo_guard(args) -> None:
    check_model_folder("--model", args.model)
    OutputGuard("demo", {"--model": args.model}).folder(
        "--out", args.out, reuse=True, ours=lambda path: (path / "metrics.json").is_file()
    )
