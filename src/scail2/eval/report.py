"""Benchmark reports and `scail2 eval` end to end: tables, plot, JSON, README section, atomic file writes.

`run_benchmark` loads the models, runs `benchmark.evaluate` on a held-out split and writes what was asked;
`scail2 demo` writes its previews with the same helpers.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from scail2.data.format import atomic_path, write_json_atomic
from scail2.errors import Scail2Error
from scail2.eval import benchmark
from scail2.train.dependence import DEPENDENCE_SIGMAS

LABELS = {
    "copy_reference": "copy reference",
    "skeleton": "skeleton-driven",
    "scail2": "SCAIL-2 (ours)",
    "directanimator": "DirectAnimator (animation pairs only)",
    "vae_round_trip": "VAE round trip (ceiling)",
}
METRIC_HEADERS = {
    "psnr": "PSNR dB ↑",
    "ssim": "SSIM ↑",
    "silhouette": "silhouette ↑",
    "path_x": "path x ↑",
    "path_y": "path y ↑",
    "extent_h": "height ↑",
    "extent_w": "width ↑",
    "iou": "old IoU ↑",
    "colour_error": "colour err ↓",
    "flicker": "flicker ↓",
}
# Scores on a 0-1 scale (correlations are plotted from 0: a negative one draws no bar).
UNIT_METRICS = ("silhouette", "path_x", "path_y", "extent_h", "extent_w", "iou", "ssim")
README_START, README_END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
PLOT_COLOURS = [(150, 150, 150), (230, 140, 40), (40, 110, 220), (90, 180, 90), (170, 80, 170)]


# 1. Files, written under a temporary name and renamed when complete ----------------------------------------


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` fills a temporary file that becomes `path` once written (folders are created as needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        write(tmp)
    return path


def json_safe(value):
    """NaN and infinities (no visible character, identical videos) become null: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | Path, data: dict) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, json_safe(data), sort_keys=False)  # reports keep the order they were built in


def write_image(path: str | Path, image: np.ndarray) -> Path:
    from PIL import Image

    return write_atomically(path, lambda tmp: Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG"))


def write_gif(path: str | Path, frames: list[np.ndarray], fps: float) -> Path:
    from PIL import Image

    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    return write_atomically(
        path,
        lambda tmp: images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0
        ),
    )


# 2. Tables and plot ------------------------------------------------------------------------------------------


def format_score(value: float, metric: str) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf"
    if metric in ("psnr", "colour_error"):
        return f"{value:.1f}"
    if metric in ("flicker", "path_x", "path_y", "extent_h", "extent_w"):
        return f"{value:.2f}"
    return f"{value:.3f}"


def markdown_tables(summary: dict, labels: dict[str, str] | None = None) -> str:
    """Markdown tables: every metric on all pairs and per task, the silhouette score's parts beside the old IoU,
    silhouette / PSNR per body plan, and where the flicker is (on the characters or elsewhere)."""
    labels = labels or LABELS
    methods = list(summary)
    if not methods:
        raise Scail2Error("no scores to report: the benchmark ran on no pairs")
    lines = [
        "| method | pairs | " + " | ".join(METRIC_HEADERS[m] for m in benchmark.METRICS) + " |",
        "|---|---:|" + "---:|" * len(benchmark.METRICS),
    ]
    tasks = [g for g in ("all", "task:animate", "task:replace", "task:multi") if g in summary[methods[0]]]
    for group in tasks:
        for method in methods:
            scores = summary[method].get(group)
            if scores:
                name = labels.get(method, method) + ("" if group == "all" else f" ({group[5:]})")
                lines.append(
                    f"| {name} | {scores['pairs']} | "
                    + " | ".join(format_score(scores[m], m) for m in benchmark.METRICS)
                    + " |"
                )
    lines += ["", "| silhouette, all pairs | precision | recall | F | old IoU (raw plate, no tolerance) |"]
    lines.append("|---|---:|---:|---:|---:|")
    for method in methods:
        scores = summary[method]["all"]
        cells = [
            scores.get(k, float("nan")) for k in ("silhouette_precision", "silhouette_recall", "silhouette", "iou")
        ]
        lines.append(f"| {labels.get(method, method)} | " + " | ".join(format_score(c, "iou") for c in cells) + " |")
    plans = [g for g in summary[methods[0]] if g.startswith("plan:")]
    lines += (
        []
        if not plans
        else [
            "",
            "| body plan (pairs) | " + " | ".join(f"{labels.get(m, m)} silhouette / PSNR" for m in methods) + " |",
            "|---|" + "---:|" * len(methods),
        ]
    )
    for group in plans:
        missing = {"silhouette": float("nan"), "psnr": float("nan")}  # a method that skips this plan's tasks
        cells = [
            f"{format_score(summary[m].get(group, missing)['silhouette'], 'silhouette')} / "
            f"{format_score(summary[m].get(group, missing)['psnr'], 'psnr')}"
            for m in methods
        ]
        lines.append(f"| {group[5:]} ({summary[methods[0]][group]['pairs']}) | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| flicker, all pairs | " + " | ".join(labels.get(m, m) for m in methods) + " |",
        "|---|" + "---:|" * len(methods),
    ]
    for name, part in (
        ("on the characters", lambda s: s["flicker_character"]),
        ("elsewhere", lambda s: s["flicker"] - s["flicker_character"]),
    ):
        cells = [format_score(part(summary[m]["all"]), "flicker") for m in methods]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def dependence_table(dependence: dict, labels: dict[str, str] | None = None) -> str:
    """Markdown: per model, the character-cell flow loss and its rise with the driving latents or masks zeroed."""
    labels = labels or LABELS
    lines = [
        "| model | character-cell loss | zero driving latents | zero driving masks |",
        "|---|---:|---:|---:|",
    ]
    for method, scores in dependence.items():
        lines.append(
            f"| {labels.get(method, method)} | {scores['character_loss']:.4f} | "
            f"{scores['rise_driving_latents']:+.1%} | {scores['rise_driving_masks']:+.1%} |"
        )
    return "\n".join(lines) + "\n"


def wins(summary: dict, method: str, baseline: str, group: str = "all") -> dict[str, bool]:
    """Per metric: does `method` beat `baseline` on `group`?"""
    ours, theirs = summary[method][group], summary[baseline][group]
    return {
        m: (ours[m] > theirs[m]) == benchmark.HIGHER_IS_BETTER[m] and ours[m] != theirs[m] for m in benchmark.METRICS
    }


def plot_summary(
    summary: dict, labels: dict[str, str] | None = None, panels: tuple[str, ...] = ("silhouette", "path_x", "psnr")
) -> np.ndarray:
    """A grouped bar chart [H, W, 3] uint8: one panel per metric, bars per method over all pairs and each body
    plan. Drawn with PIL, so the report needs no plotting library."""
    from PIL import Image, ImageDraw

    labels = labels or LABELS
    methods = list(summary)
    groups = [g for g in summary[methods[0]] if g == "all" or g.startswith("plan:")]
    bar, gap, panel_h, left, top = 14, 18, 220, 48, 30
    group_w = bar * len(methods) + gap
    width = left + group_w * len(groups) + 20
    height = top + len(panels) * (panel_h + 60) + 20 * len(methods)
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for p, metric in enumerate(panels):
        y0 = top + p * (panel_h + 60)
        values = [summary[m].get(g, {}).get(metric, float("nan")) for m in methods for g in groups]
        high = max([v for v in values if math.isfinite(v)] + [1e-6])
        scale_max = 1.0 if metric in UNIT_METRICS else math.ceil(high / 5) * 5
        draw.text((4, y0 - 22), METRIC_HEADERS[metric], fill=(0, 0, 0))
        for tick in np.linspace(0, scale_max, 5):
            y = y0 + panel_h - panel_h * tick / scale_max
            draw.line([(left - 4, y), (width - 10, y)], fill=(225, 225, 225))
            draw.text((4, y - 6), f"{tick:g}", fill=(80, 80, 80))
        for gi, group in enumerate(groups):
            x0 = left + gi * group_w
            for mi, method in enumerate(methods):
                value = summary[method].get(group, {}).get(metric, float("nan"))
                if math.isnan(value):
                    continue
                h = panel_h * min(max(value, 0.0), scale_max) / scale_max
                draw.rectangle(
                    [x0 + mi * bar, y0 + panel_h - h, x0 + (mi + 1) * bar - 2, y0 + panel_h],
                    fill=PLOT_COLOURS[mi % len(PLOT_COLOURS)],
                )
            draw.text((x0, y0 + panel_h + 4), group.removeprefix("plan:")[:9], fill=(0, 0, 0))
    legend_y = top + len(panels) * (panel_h + 60) - 20
    for mi, method in enumerate(methods):
        y = legend_y + 20 * mi
        draw.rectangle([left, y, left + 12, y + 12], fill=PLOT_COLOURS[mi % len(PLOT_COLOURS)])
        draw.text((left + 18, y), labels.get(method, method), fill=(0, 0, 0))
    return np.asarray(image)


# 3. README blocks: headline and verdict in the project README, every table in the report folder's ------------

# How the verdict lines name methods and metrics.
VERDICT_NAMES = {
    "copy_reference": "copy-reference",
    "skeleton": "the skeleton-driven model",
    "scail2": "SCAIL-2",
    "vae_round_trip": "the VAE round trip",
}
METRIC_NAMES = {
    "psnr": "PSNR",
    "ssim": "SSIM",
    "silhouette": "silhouette",
    "path_x": "path x",
    "path_y": "path y",
    "extent_h": "height",
    "extent_w": "width",
    "iou": "old IoU",
    "colour_error": "colour error",
    "flicker": "flicker",
}


def headline_table(summary: dict, labels: dict[str, str] | None = None) -> str:
    """The first table of `markdown_tables` without its per-task rows: every metric of every method, all pairs."""
    labels = labels or LABELS
    if not summary:
        raise Scail2Error("no scores to report: the benchmark ran on no pairs")
    lines = [
        "| method | pairs | " + " | ".join(METRIC_HEADERS[m] for m in benchmark.METRICS) + " |",
        "|---|---:|" + "---:|" * len(benchmark.METRICS),
    ]
    for method, groups in summary.items():
        scores = groups["all"]
        lines.append(
            f"| {labels.get(method, method)} | {scores['pairs']} | "
            + " | ".join(format_score(scores[m], m) for m in benchmark.METRICS)
            + " |"
        )
    return "\n".join(lines) + "\n"


def _metric_list(metrics: list[str]) -> str:
    names = [METRIC_NAMES[m] for m in metrics]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def comparison(summary: dict, method: str, baseline: str) -> str:
    """One sentence on all pairs: 'SCAIL-2 beats copy-reference on PSNR and SSIM, and loses on flicker.'"""
    won = [m for m, better in wins(summary, method, baseline).items() if better]
    lost = [m for m, better in wins(summary, baseline, method).items() if better]
    tied = [m for m in benchmark.METRICS if m not in won and m not in lost]
    other = VERDICT_NAMES.get(baseline, baseline)
    if len(won) == len(benchmark.METRICS):
        parts = [f"beats {other} on all {len(won)} metrics"]
    else:
        parts = [f"beats {other} on {_metric_list(won)}"] if won else []
        if lost:
            parts.append(("loses" if won else f"loses to {other}") + f" on {_metric_list(lost)}")
        if tied:
            parts.append(("ties" if parts else f"ties with {other}") + f" on {_metric_list(tied)}")
    name = VERDICT_NAMES.get(method, method)
    sentence = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + ", and " + parts[-1]
    return f"{name[0].upper()}{name[1:]} {sentence}."


def verdict_lines(summary: dict) -> list[str]:
    """Up to three lines: SCAIL-2 against copy-reference and against the skeleton-driven model, and the ceiling."""
    lines = [
        comparison(summary, "scail2", baseline)
        for baseline in ("copy_reference", "skeleton")
        if "scail2" in summary and baseline in summary
    ]
    if "vae_round_trip" in summary:
        ceiling = summary["vae_round_trip"]["all"]
        line = (
            f"The VAE round trip of the ground truth, the ceiling of any model decoded by this VAE, reaches "
            f"{format_score(ceiling['psnr'], 'psnr')} dB, SSIM {format_score(ceiling['ssim'], 'ssim')} and "
            f"silhouette {format_score(ceiling['silhouette'], 'silhouette')}"
        )
        behind = (
            [m for m, better in wins(summary, "copy_reference", "vae_round_trip").items() if better]
            if "copy_reference" in summary
            else []
        )
        lines.append(line + (f"; even it loses to copy-reference on {_metric_list(behind)}." if behind else "."))
    return lines


def readme_section(summary: dict, details_link: str | None = None) -> str:
    """The project README's benchmark block: the all-pairs table, the verdict and where the other tables are."""
    text = headline_table(summary) + "\n" + "".join(f"- {line}\n" for line in verdict_lines(summary))
    if details_link:
        text += (
            f"\nPer-task and per-body-plan tables, where the flicker is, the plot and what the numbers say: "
            f"[{details_link}]({details_link}).\n"
        )
    return text


def details_readme(report_dir: str | Path | None) -> Path | None:
    """The report folder's README.md, whose benchmark block receives every table; None when it has none, or has no
    benchmark markers (a page of the user's own, left as it is)."""
    path = Path(report_dir) / "README.md" if report_dir else None
    if path is None or not path.is_file():
        return None
    return path if _readme_pattern().search(path.read_text(errors="replace")) else None


def write_benchmark_readmes(
    summary: dict, protocol: str, tables: str, readme: str | Path | None = None, report_dir: str | Path | None = None
) -> None:
    """Rewrite the benchmark blocks: the headline and verdict in `readme`; the protocol, every table and the plot
    in `report_dir`/README.md when that file exists. Same scores in, same files out."""
    details = details_readme(report_dir)
    if details is not None:
        update_readme(details, f"{protocol}\n\n{tables}\n![benchmark plot](plot.png)\n")
    if readme is None:
        return
    readme = Path(readme)
    more = details or (Path(report_dir) / "table.md" if report_dir else None)
    link = None if more is None else Path(os.path.relpath(more.resolve(), readme.resolve().parent)).as_posix()
    update_readme(readme, readme_section(summary, link))


def update_readme(readme: Path, section: str) -> None:
    """Replace the text between the benchmark markers of `readme` with `section`."""
    text = _readme_text(readme)
    write_atomically(
        readme,
        lambda tmp: tmp.write_text(_readme_pattern().sub(lambda _: f"{README_START}\n{section}{README_END}", text)),
    )


def _readme_pattern() -> re.Pattern:
    return re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)


def _readme_text(readme: Path) -> str:
    if not readme.is_file():
        raise Scail2Error(f"{readme}: no such file; pass the README to update with --readme")
    text = readme.read_text()
    if not _readme_pattern().search(text):
        raise Scail2Error(f"{readme} has no '{README_START}' ... '{README_END}' markers; add them where the table goes")
    return text


# 4. `scail2 eval` --------------------------------------------------------------------------------------------


def skeleton_pipeline(folder: str | Path, vae) -> object:
    """The skeleton baseline: a full model folder, or a transformer (folder with transformer/, or the
    transformer folder itself) that decodes with `vae` (the SCAIL-2 model's, which it was trained with)."""
    from scail2.animate import load_pipeline
    from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel
    from scail2.pipelines.pipeline_scail2 import SCAIL2Pipeline

    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return load_pipeline(folder, torch.device("cpu"))
    weights = folder / "transformer" if (folder / "transformer").is_dir() else folder
    if not (weights / "config.json").is_file():
        raise Scail2Error(
            f"{weights}: no transformer config.json; pass the skeleton run's export/model folder with "
            "--skeleton-model, or --skeleton-model none to leave the baseline out"
        )
    transformer = SCAIL2Transformer3DModel.from_pretrained(weights, torch_dtype=torch.float32)
    return SCAIL2Pipeline(transformer=transformer.eval(), vae=vae)


def build_methods(args) -> tuple[dict, object]:
    from scail2.animate import load_pipeline
    from scail2.bundled import BUNDLED_SAMPLING, BUNDLED_SKELETON, bundled_model_dir

    pipeline = load_pipeline(args.model or bundled_model_dir(), torch.device("cpu"))
    overrides = {k: v for k, v in (("steps", args.steps), ("shift", args.shift)) if v is not None}
    settings = dataclasses.replace(BUNDLED_SAMPLING, **overrides)
    methods = {"copy_reference": benchmark.copy_reference}
    if args.skeleton_model != "none" and getattr(args, "split", None) != benchmark.OUTSIDE_SPLIT:
        skeleton = skeleton_pipeline(args.skeleton_model or BUNDLED_SKELETON, pipeline.vae)
        methods["skeleton"] = benchmark.ModelMethod(skeleton, settings, driving="skeleton", seed=args.seed)
    methods["scail2"] = benchmark.ModelMethod(pipeline, settings, driving="frames", seed=args.seed)
    if getattr(args, "directanimator_model", None):
        from scail2.eval.directanimator import directanimator_method

        methods["directanimator"] = directanimator_method(args.directanimator_model, settings, args.seed)
    methods["vae_round_trip"] = benchmark.VaeRoundTrip(pipeline)
    return methods, settings


def command_line(args) -> str:
    """The `scail2 eval` call that regenerates this report."""
    parts = ["scail2 eval", f"--split {args.split}"]
    for flag, value in (
        ("--model", args.model),
        ("--skeleton-model", args.skeleton_model),
        ("--directanimator-model", getattr(args, "directanimator_model", None)),
        ("--pairs", args.pairs),
        ("--steps", args.steps),
        ("--shift", args.shift),
        ("--json", args.json),
        ("--report-dir", args.report_dir),
        ("--readme", args.readme),
    ):
        if value is not None:
            parts.append(f"{flag} {value}")
    if args.seed:
        parts.append(f"--seed {args.seed}")
    if getattr(args, "no_dependence", False):
        parts.append("--no-dependence")
    return " ".join(parts)


def run_benchmark(args) -> dict:
    for readme in (args.readme, details_readme(args.report_dir)):
        if readme:
            _readme_text(Path(readme))  # fail before the long run, not after it
    default = benchmark.OUTSIDE_SIZE if args.split == benchmark.OUTSIDE_SPLIT else benchmark.SPLIT_SIZE
    count = default if args.pairs is None else args.pairs
    samples = benchmark.split_pairs(args.split, count)
    methods, settings = build_methods(args)
    rows = benchmark.evaluate(methods, samples, progress=not args.quiet)
    summary = benchmark.summarise(rows)
    dependence = (
        {} if getattr(args, "no_dependence", False) else benchmark.driver_dependence(methods, samples, not args.quiet)
    )
    tables = markdown_tables(summary)
    if dependence:
        tables += (
            "\nDriver dependence: the rise of the flow loss on character cells (noise levels "
            f"{', '.join(f'{s:g}' for s in DEPENDENCE_SIGMAS)}) when a model's driving stream is zeroed.\n\n"
            + dependence_table(dependence)
        )
    height, width, frames = samples[0].target.shape[1], samples[0].target.shape[2], samples[0].target.shape[0]
    beaten = wins(summary, "scail2", "copy_reference")
    protocol = (
        f"{len(samples)} held-out pairs of the `{args.split}` split ({width}x{height}, "
        f"{frames} frames), {settings.sampler} {settings.steps} steps, shift {settings.shift:g}, seed "
        f"{args.seed}. SCAIL-2 beats copy-reference on {sum(beaten.values())} of {len(beaten)} metrics. "
        f"Regenerate with `{command_line(args)}`."
    )
    print(protocol + "\n\n" + tables)
    if args.json:
        write_json(
            args.json,
            {
                "split": args.split,
                "settings": dataclasses.asdict(settings),
                "summary": summary,
                "dependence": dependence,
                "rows": rows,
            },
        )
    if args.report_dir:
        folder = Path(args.report_dir)
        write_atomically(folder / "table.md", lambda tmp: tmp.write_text(protocol + "\n\n" + tables))
        write_image(folder / "plot.png", plot_summary(summary))
    write_benchmark_readmes(summary, protocol, tables, args.readme, args.report_dir)
    return summary
