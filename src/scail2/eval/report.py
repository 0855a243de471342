"""`scail2 eval` end to end: load the models, run the benchmark, write the JSON, table, plot and README section."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import torch

from scail2.errors import Scail2Error
from scail2.eval import benchmark

LABELS = {"copy_reference": "copy reference", "skeleton": "skeleton-driven", "scail2": "SCAIL-2 (ours)",
          "vae_round_trip": "VAE round trip (ceiling)"}
README_START, README_END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"


def skeleton_pipeline(folder: str | Path, vae) -> object:
    """The skeleton baseline: its own transformer (a folder with transformer/, or the transformer folder) and the
    SCAIL-2 model's VAE, which it was trained with."""
    from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel
    from scail2.pipelines.pipeline_scail2 import SCAIL2Pipeline

    folder = Path(folder)
    weights = folder / "transformer" if (folder / "transformer").is_dir() else folder
    if not (weights / "config.json").is_file():
        raise Scail2Error(f"{weights}: no transformer config.json; pass the skeleton run's export/model folder")
    transformer = SCAIL2Transformer3DModel.from_pretrained(weights, torch_dtype=torch.float32)
    return SCAIL2Pipeline(transformer=transformer.eval(), vae=vae)


def build_methods(args) -> dict:
    from scail2.animate import load_pipeline
    from scail2.bundled import BUNDLED_SAMPLING, BUNDLED_SKELETON, bundled_model_dir

    device = torch.device("cpu")
    pipeline = load_pipeline(args.model or bundled_model_dir(), device)
    overrides = {k: v for k, v in (("steps", args.steps), ("shift", args.shift)) if v is not None}
    settings = dataclasses.replace(BUNDLED_SAMPLING, **overrides)
    methods = {"copy_reference": benchmark.copy_reference}
    if args.skeleton_model != "none":
        skeleton = skeleton_pipeline(args.skeleton_model or BUNDLED_SKELETON, pipeline.vae)
        methods["skeleton"] = benchmark.ModelMethod(skeleton, settings, driving="skeleton", seed=args.seed)
    methods["scail2"] = benchmark.ModelMethod(pipeline, settings, driving="frames", seed=args.seed)
    methods["vae_round_trip"] = benchmark.VaeRoundTrip(pipeline)
    return methods, settings


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def update_readme(readme: Path, section: str) -> None:
    """Replace the text between the benchmark markers of `readme` with `section`."""
    text = readme.read_text()
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise Scail2Error(f"{readme} has no '{README_START}' ... '{README_END}' markers; add them where the table "
                          "goes")
    _write(readme, pattern.sub(lambda _: f"{README_START}\n{section}{README_END}", text))


def run_benchmark(args) -> dict:
    methods, settings = build_methods(args)
    samples = benchmark.split_pairs(args.split, args.pairs or benchmark.SPLIT_SIZE)
    rows = benchmark.evaluate(methods, samples, progress=not args.quiet)
    summary = benchmark.summarise(rows)
    tables = benchmark.markdown_tables(summary, LABELS)
    print(tables)
    protocol = (f"{len(samples)} held-out pairs of the `{args.split}` split (128x128, 17 frames), "
                f"{settings.sampler} {settings.steps} steps, shift {settings.shift:g}, seed {args.seed}; "
                f"regenerate with `scail2 eval --split {args.split}"
                + (" --report-dir docs/benchmark --readme README.md`" if args.readme else "`") + ".")
    if args.json:
        _write(Path(args.json), json.dumps({"split": args.split, "settings": dataclasses.asdict(settings),
                                            "summary": summary, "rows": rows}, indent=1) + "\n")
    if args.report_dir:
        from scail2.demo import write_image

        folder = Path(args.report_dir)
        _write(folder / "table.md", protocol + "\n\n" + tables)
        folder.mkdir(parents=True, exist_ok=True)
        write_image(folder / "plot.png", benchmark.plot_summary(summary, LABELS))
    if args.readme:
        plot = f"![benchmark plot]({Path(args.report_dir) / 'plot.png'})\n" if args.report_dir else ""
        update_readme(Path(args.readme), f"{protocol}\n\n{tables}\n{plot}")
    return summary
