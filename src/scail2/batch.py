"""`scail2 batch JOBS.yaml`: many references x driving videos, a cache of the driving work, resumable jobs.

    out: renders              # outputs, queue.json, checkpoints/ and cache/ (default: JOBS_out beside the file)
    defaults:                 # settings of every job: any `scail2 animate` flag, with underscores
      steps: 10
      handoff: pixel
    jobs:
      - ref: [fox.png, cat.png]   # one or several references ...
        driving: dance.mp4        # ... times one or several driving videos
        driving_mask: dance_masks/
        seed: 3
      - name: knight              # optional; default <ref stem>-<driving stem>
        ref: knight.png
        driving: walk.mp4

`run_batch` runs the jobs in order. The driving video's work is kept in a content-addressed cache
(`DrivingCache`), keyed by the input files' SHA-256 and the settings that change it: decoded and resized
frames with their masks, each segment's driving latents and mask tensors, text and CLIP embeddings; a second
reference on the same driving video reads them instead of computing them. Each finished segment is kept
(`SegmentCheckpoints`), so a job killed mid-video resumes at its last finished segment and writes the same
bytes. `queue.json` records every job's state, so a restarted batch skips finished jobs and runs the rest; a
failing job is recorded with its error and the others go on. Paths in the jobs file are relative to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from scail2.animate import (
    AnimateRequest,
    LoadedDriving,
    load_driving,
    load_inputs,
    load_pipeline,
    model_fingerprint,
    resolve_device,
    run_animate,
    sampling_settings,
    target_size,
    with_bundled_model,
    write_manifest,
)
from scail2.commands.batch_checks import batch_guard, check_entry
from scail2.conditioning import SegmentConditions
from scail2.data.format import FormatSpec, atomic_path, atomic_write_bytes, file_sha256, read_json, write_json_atomic
from scail2.errors import Scail2Error
from scail2.outputs import mark
from scail2.pipelines.pipeline_directanimator import DirectAnimatorPipeline
from scail2.pipelines.segment_hooks import SegmentHooks, SegmentState
from scail2.pipelines.segments import Segment

QUEUE = FormatSpec("scail2-batch-queue", 1, (1,), "a scail2 batch queue", "batch", "jobs file")
CACHE_VERSION = 1  # part of every cache key: bump when what is cached changes meaning
SAMPLING_KEYS = ("sampler", "steps", "shift", "cfg", "segment_length", "overlap")
PATH_KEYS = ("ref", "driving", "driving_mask", "ref_mask", "model")
REQUEST_KEYS = {
    "model", "driving_mask", "ref_mask", "prompt", "negative_prompt", "mode", "height", "width", "max_frames",
    "seed", "loras", "lora_mode", "device", "dtype", "attention", "quantize", "cache", "extra_refs", "handoff",
    "color_anchor", "qa", "qa_retry", "alpha",
}  # fmt: skip
JOB_KEYS = {"name", "ref", "driving", "preset", *SAMPLING_KEYS, *REQUEST_KEYS}


# 1. Jobs -----------------------------------------------------------------------------------------------------


@dataclass
class BatchJob:
    name: str
    request: AnimateRequest


def read_jobs_file(path: str | Path) -> tuple[Path, list[BatchJob]]:
    """(output folder, jobs) of a jobs file; one-line Scail2Errors name the file and the bad entry."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise Scail2Error(f"{path}: jobs file not found; give a YAML file with a `jobs:` list")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise Scail2Error(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise Scail2Error(f"{path}: not a text file; give a YAML file with a `jobs:` list") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("jobs"), list) or not spec["jobs"]:
        raise Scail2Error(f"{path}: needs a non-empty `jobs:` list (see `scail2 batch --help`)")
    unknown = sorted(set(spec) - {"out", "defaults", "jobs"})
    if unknown:
        raise Scail2Error(f"{path}: unknown top-level keys {unknown}; the file holds out:, defaults: and jobs:")
    if not isinstance(spec.get("out", ""), str) or not isinstance(spec.get("defaults") or {}, dict):
        raise Scail2Error(f"{path}: `out:` must be a folder name and `defaults:` a mapping of settings")
    base = path.parent
    out = base / spec.get("out", f"{path.stem}_out")
    defaults = spec.get("defaults") or {}
    jobs: list[BatchJob] = []
    for index, entry in enumerate(spec["jobs"]):
        if not isinstance(entry, dict):
            raise Scail2Error(f"{path}: job {index + 1} is {entry!r}, not a mapping of settings (ref:, driving:, ...)")
        jobs.extend(_expand(path, index, {**defaults, **entry}, base, out))
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise Scail2Error(f"{path}: two jobs are named {duplicate!r}; give them distinct `name:` fields")
    return out, jobs


def _expand(source: Path, index: int, entry: dict, base: Path, out: Path) -> list[BatchJob]:
    unknown = sorted(set(entry) - JOB_KEYS)
    if unknown:
        raise Scail2Error(f"{source}: job {index + 1} has unknown settings {unknown}; use `scail2 animate` flag names")
    for key in ("ref", "driving"):
        if not entry.get(key):
            raise Scail2Error(f"{source}: job {index + 1} needs `{key}:` (a file or a list of files)")
    check_entry(source, index, entry, base)
    refs, drivings = _as_list(entry["ref"]), _as_list(entry["driving"])
    jobs = []
    for ref in refs:
        for driving in drivings:
            name = entry.get("name") or f"{Path(ref).stem}-{Path(driving).stem}"
            if entry.get("name") and len(refs) * len(drivings) > 1:
                name = f"{name}-{Path(ref).stem}-{Path(driving).stem}"
            jobs.append(
                BatchJob(name, _request(source, index, {**entry, "ref": ref, "driving": driving}, base, out, name))
            )
    return jobs


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _request(source: Path, index: int, entry: dict, base: Path, out: Path, name: str) -> AnimateRequest:
    fields = {key: entry[key] for key in REQUEST_KEYS if key in entry}
    for key in PATH_KEYS:
        if entry.get(key) is not None:
            fields[key] = str(base / entry[key])
    fields["extra_refs"] = [str(base / p) for p in _as_list(entry.get("extra_refs", []))]
    overrides = {key: entry.get(key) for key in SAMPLING_KEYS}
    overrides["guidance_scale"] = overrides.pop("cfg")
    try:
        settings = sampling_settings(entry.get("preset"), entry.get("model") is None, **overrides)
        return AnimateRequest(out=out / f"{name}.mp4", settings=settings, **fields)
    except (Scail2Error, TypeError, ValueError) as error:
        raise Scail2Error(f"{source}: job {index + 1} ({name}): {error}") from None


# 2. The cache of driving-video work -----------------------------------------------------------------------


def settings_key(kind: str, **parts) -> str:
    """The cache key of `kind` for `parts` (file hashes and settings, JSON-able)."""
    text = json.dumps({"kind": kind, "version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class DrivingCache:
    """Content-addressed files under `root`/<kind>/<key>.safetensors; `hits` and `misses` count per kind."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits: dict[str, int] = {}
        self.misses: dict[str, int] = {}
        self._hashes: dict[tuple, str] = {}

    def counts(self) -> dict[str, dict[str, int]]:
        """Hits and misses per kind so far."""
        return {"hits": dict(self.hits), "misses": dict(self.misses)}

    # keys
    def input_hash(self, path: str | Path | None) -> str | None:
        """SHA-256 of a file's content, or of a folder's files (relative names and contents); remembered per path,
        size and modification time."""
        if path is None:
            return None
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
        if stamp not in self._hashes:
            digest = hashlib.sha256()
            for p in files:
                digest.update(str(p.relative_to(path)).encode() if path.is_dir() else b"")  # a file: content only
                digest.update(file_sha256(p).encode())
            self._hashes[stamp] = digest.hexdigest()
        return self._hashes[stamp]

    def driving_key(self, request: AnimateRequest, target: tuple[int, int]) -> str:
        return settings_key(
            "driving",
            video=self.input_hash(request.driving),
            masks=self.input_hash(request.driving_mask),
            size=target,
            max_frames=request.max_frames,
            mode=request.mode,
        )

    # storage
    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.safetensors"

    def _load(self, kind: str, key: str) -> tuple[dict, dict] | None:
        from safetensors import safe_open

        path = self._path(kind, key)
        if not path.is_file():
            self.misses[kind] = self.misses.get(kind, 0) + 1
            return None
        with safe_open(path, framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            meta = json.loads((handle.metadata() or {}).get("meta", "{}"))
        self.hits[kind] = self.hits.get(kind, 0) + 1
        return tensors, meta

    def _save(self, kind: str, key: str, tensors: dict, meta: dict | None = None) -> None:
        from safetensors.torch import save_file

        path = self._path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(
                {k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"meta": json.dumps(meta or {})}
            )

    # what is cached
    def driving(self, request: AnimateRequest, target: tuple[int, int]) -> LoadedDriving:
        """Decoded, resized driving frames and their masks (automatic masks included)."""
        key = self.driving_key(request, target)
        found = self._load("driving", key)
        if found is not None:
            tensors, meta = found
            fps, audio = Fraction(meta["fps"]), meta["has_audio"]
            return LoadedDriving(tensors["frames"], tensors["masks"], fps, audio, meta.get("timing"))
        loaded = load_driving(request, target)
        meta = {"fps": str(loaded.fps), "has_audio": loaded.has_audio, "source": str(request.driving)}
        meta["timing"] = loaded.timing
        self._save("driving", key, {"frames": loaded.frames, "masks": loaded.masks}, meta)
        return loaded

    def conditions(self, pipeline, request: AnimateRequest, inputs, driving_key: str, model: str) -> list:
        """Each segment's driving latents and mask tensors (`SCAIL2Pipeline.prepare_segment`)."""
        settings = request.settings
        key = settings_key(
            "conditions",
            driving=driving_key,
            model=model,
            length=settings.segment_length,
            overlap=settings.overlap,
            **encoder_numerics(request),
        )
        segments = pipeline.plan_segments(inputs.driving.shape[0], settings)
        found = self._load("conditions", key)
        if found is not None:
            tensors, _ = found
            return [
                SegmentConditions(tensors[f"pose_latents.{s.index}"], tensors[f"driving_masks.{s.index}"])
                for s in segments
            ]
        conditions = [pipeline.prepare_segment(inputs, segment) for segment in segments]
        tensors = {}
        for segment, condition in zip(segments, conditions):
            tensors[f"pose_latents.{segment.index}"] = condition.pose_latents.cpu()
            tensors[f"driving_masks.{segment.index}"] = condition.driving_masks.cpu()
        self._save("conditions", key, tensors)
        return conditions

    def embeddings(self, pipeline, request: AnimateRequest, inputs, model: str, target) -> dict:
        """Text embeddings of the prompts and CLIP tokens of the reference, when the model has those encoders."""
        found: dict = {}
        if pipeline.text_encoder is not None:
            guided = request.settings.guidance_scale > 1
            key = settings_key(
                "text",
                model=model,
                prompt=request.prompt,
                negative=request.negative_prompt,
                guided=guided,
                **encoder_numerics(request),
            )
            cached = self._load("text", key)
            if cached is None:
                text = pipeline.encode_prompts(request.prompt, request.negative_prompt, request.settings.guidance_scale)
                self._save("text", key, {"text": text.cpu()})
            else:
                text = cached[0]["text"]
            found["prompt_embeds"] = text[-1:]
            if guided:
                found["negative_prompt_embeds"] = text[:1]
        if pipeline.image_encoder is not None and pipeline.transformer.config.model_type == "i2v":
            key = settings_key(
                "clip", model=model, ref=self.input_hash(request.ref), size=target, **encoder_numerics(request)
            )
            cached = self._load("clip", key)
            if cached is None:
                image = pipeline.encode_image(inputs.reference)
                self._save("clip", key, {"image": image.cpu()})
            else:
                image = cached[0]["image"]
            found["image_embeds"] = image
        return found


def encoder_numerics(request: AnimateRequest) -> dict:
    """The request's settings that change what the VAE and the encoders compute (precision, device, quantised
    weights, VAE tiling), so a cached tensor is reused only where an uncached run would make the same one."""
    memory = request.memory
    return {
        "dtype": request.dtype,
        "device": request.device,
        "quantize": request.quantize,
        "vae_tiling": getattr(memory, "vae_tiling", None),
        "encoders_on_cpu": getattr(memory, "encoders_on_cpu", None),
    }


# 3. Per-segment checkpoints -----------------------------------------------------------------------------------


class SegmentCheckpoints(SegmentHooks):
    """Each finished segment of one job as `folder`/segment_NNNN.safetensors (its output and carry). A folder
    made for other settings (`fingerprint`) is emptied first, so a changed job never resumes stale segments."""

    def __init__(self, folder: str | Path, fingerprint: str):
        self.folder = Path(folder)
        stamp = self.folder / "fingerprint.txt"
        if self.folder.exists() and (not stamp.is_file() or stamp.read_text() != fingerprint):
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(stamp, fingerprint.encode())
        self.resumed: list[int] = []

    def _path(self, segment: Segment) -> Path:
        return self.folder / f"segment_{segment.index:04d}.safetensors"

    def resume(self, segment: Segment) -> SegmentState | None:
        from safetensors.torch import load_file

        path = self._path(segment)
        if not path.is_file():
            return None
        tensors = load_file(str(path))
        self.resumed.append(segment.index)
        return SegmentState(tensors["output"], tensors.get("carry"))

    def finished(self, segment: Segment, state: SegmentState, attempts: int) -> None:
        from safetensors.torch import save_file

        tensors = {"output": state.output.contiguous()}
        if state.carry is not None:
            tensors["carry"] = state.carry.detach().cpu().contiguous()
        with atomic_path(self._path(segment)) as tmp:
            save_file(tensors, str(tmp))

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


# 4. The queue ---------------------------------------------------------------------------------------------------


@dataclass
class BatchRunner:
    """Runs jobs with one loaded pipeline per model setup, the driving cache and per-job checkpoints."""

    out: Path
    cache: DrivingCache
    pipelines: dict = field(default_factory=dict)
    checkpoint_hook: object = None  # wraps each job's checkpoints (tests stop a job after a segment)

    def pipeline_for(self, request: AnimateRequest):
        device = resolve_device(request.device)
        key = (
            str(request.model),
            request.dtype,
            str(device),
            tuple(request.loras),
            request.lora_mode,
            request.quantize,
        )
        if key not in self.pipelines:
            self.pipelines.clear()  # one model in memory at a time
            self.pipelines[key] = load_pipeline(
                request.model, device, request.loras, request.dtype, request.attention, quantize=request.quantize,
                memory=request.memory, lora_mode=request.lora_mode,
            )  # fmt: skip
        return self.pipelines[key]

    def run_job(self, job: BatchJob) -> dict:
        request = job.request if job.request.model is not None else with_bundled_model(job.request)
        pipeline = self.pipeline_for(request)
        if pipeline.text_encoder is None and request.settings.guidance_scale != 1:
            request = dataclasses.replace(request, settings=dataclasses.replace(request.settings, guidance_scale=1.0))
        model = model_fingerprint(request.model)
        target = target_size(request)
        driving = self.cache.driving(request, target)
        loaded = load_inputs(request, driving)
        call = self.cache.embeddings(pipeline, request, loaded.inputs, model, target)
        if not isinstance(pipeline, DirectAnimatorPipeline):  # its cue conditions are made inside the call
            key = self.cache.driving_key(request, target)
            call["segment_conditions"] = self.cache.conditions(pipeline, request, loaded.inputs, key, model)
        checkpoints = SegmentCheckpoints(self.out / "checkpoints" / job.name, job_fingerprint(request, model))
        hooks = self.checkpoint_hook(checkpoints) if self.checkpoint_hook else checkpoints
        manifest = run_animate(request, pipeline, loaded=loaded, segment_hooks=hooks, call_kwargs=call)
        manifest["batch"] = {"job": job.name, "resumed_segments": checkpoints.resumed, "cache": self.cache.counts()}
        write_manifest(request.out, manifest)
        checkpoints.clear()
        return manifest


def job_fingerprint(request: AnimateRequest, model: str) -> str:
    """What a job's checkpoints depend on: every setting but the output paths, and the model's content."""
    settings = {k: v for k, v in dataclasses.asdict(request).items() if k not in ("out", "frames_dir")}
    return settings_key("job", settings=settings, model=model)


def load_queue(path: Path, jobs: list[BatchJob]) -> dict:
    """The queue state: the one in `path` (a restarted batch) merged with the jobs file's jobs."""
    state = QUEUE.header(jobs={})
    if path.is_file():
        state = read_json(path, missing_hint="", corrupt_hint="delete it to start the batch afresh")
        QUEUE.check_header(state, path)
    for job in jobs:
        state["jobs"].setdefault(job.name, {"status": "pending"})
    return state


def run_batch(jobs_file: str | Path, out: str | Path | None = None, runner: BatchRunner | None = None) -> list[dict]:
    """Run every unfinished job of a jobs file; returns one summary row per job (see `summary_table`)."""
    default_out, jobs = read_jobs_file(jobs_file)
    out = Path(out) if out is not None else default_out
    if out != default_out:
        jobs = [BatchJob(j.name, dataclasses.replace(j.request, out=out / f"{j.name}.mp4")) for j in jobs]
    batch_guard(jobs_file, "--out" if out != default_out else f"out: of {jobs_file}", out, jobs)
    mark(out, "batch")
    runner = runner or BatchRunner(out, DrivingCache(out / "cache"))
    queue_path = out / "queue.json"
    state = load_queue(queue_path, jobs)
    rows = []
    for job in jobs:
        record = state["jobs"][job.name]
        if record["status"] == "done" and Path(job.request.out).is_file():
            rows.append({"job": job.name, **record, "status": "done (earlier)"})
            continue
        record.update(status="running", error=None)
        write_json_atomic(queue_path, state)
        start = time.perf_counter()
        try:
            manifest = runner.run_job(job)
            record.update(
                status="done",
                output=manifest["output"],
                frames=manifest["frames"],
                qa=manifest.get("qa", {}).get("status"),
                resumed_segments=manifest["batch"]["resumed_segments"],
            )
        except Exception as error:  # noqa: BLE001 -- one bad job (input, out of memory) must not stop the rest
            record.update(status="failed", error=failure_message(error))
        record["seconds"] = round(time.perf_counter() - start, 2)
        write_json_atomic(queue_path, state)
        rows.append({"job": job.name, **record})
    return rows


def failure_message(error: Exception) -> str:
    """One line for the queue and the table: a Scail2Error's own message, else the type and first line."""
    first = str(error).splitlines()[0] if str(error) else ""
    return first if isinstance(error, Scail2Error) else f"{type(error).__name__}: {first}".rstrip(": ")


def summary_table(rows: list[dict]) -> str:
    """A plain-text table: job, status, frames, seconds, QA, output or error."""
    header = ("job", "status", "frames", "seconds", "QA", "output / error")
    lines = [
        (
            row["job"],
            row["status"],
            str(row.get("frames", "")),
            f"{row['seconds']:.1f}" if row.get("seconds") is not None else "",
            row.get("qa") or "",
            row.get("error") or row.get("output", ""),
        )
        for row in rows
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *lines])
