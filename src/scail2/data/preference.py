"""Bias-aware preference pairs for DPO: the loser's driving signal went through one more synthesis.

See docs/architecture.md, "DPO".

For a MotionPair sample (reference R, driving video d with masks, target y) and an animation function G:

    winner = G(R, d)                  the model's answer to the pair's own conditions
    d'     = G(R_d, d)                d re-synthesised once more with the driving character's own appearance
                                      R_d (its best-visible driving frame) in the driving scene: synthesis drift
                                      only, no new identity or background (replacement mode)
    loser  = G(R, d')                 the answer to a driving signal one synthesis round further from reality

Both outer calls use the same reference, mode and seed, so the driving signal is the only difference, and
DPO teaches the model to prefer the less-drifted result under the ORIGINAL conditions (R, d). The driving
masks of d are reused for d' (G returns frames only), as a generated video's re-segmented masks would be
close to them.

G is any callable `animate(reference, reference_mask, driving, driving_masks, mode) -> frames`, uint8 arrays
[H, W, 3], [H, W, 3], [F, H, W, 3], [F, H, W, 3], mode "animate" or "replace", returning [F, H, W, 3]:

- `PipelineAnimator` wraps a `SCAIL2Pipeline`: the real thing (the loser then carries the model's own drift);
- `ProceduralAnimator` is a weight-free stand-in for tests and bootstrapping. It does NOT animate (it keeps
  the driving character's silhouette and only recolours it like the reference); it models synthesis drift:
  a smooth non-rigid warp of the character (pose and limb jitter), blur (lost fine detail) and colour drift.

On disk (format `scail2-preference`, version 1) a preference dataset is laid out like a MotionPair dataset
(meta.json, shard-*.tar, manifest.json; resumable, shardable). Each sample holds the MotionPair members of
the source pair with `target` replaced by the winner (its identity and detail maps stay the source target's:
where the character and its fine detail should be), plus `loser.png` (frames stacked vertically) and
`preference.json` (format, version, drift statistics). `build_preference_cache` encodes it into a standard
latent cache (`LatentCache` reads it unchanged) whose records carry `loser_latents` beside `target_latents`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from scail2.conditioning import AnimationInputs, encode_video
from scail2.data import latent_cache
from scail2.data.format import FormatSpec
from scail2.data.pairs import MASK_BACKGROUNDS, PairSample, palette_mask
from scail2.data.shards import (
    MotionPairDataset,
    WriteReport,
    decode_json_member,
    decode_png,
    decode_sample,
    encode_png,
    encode_sample,
    read_shard,
    resolve_sharding,
    write_shards,
)
from scail2.errors import Scail2Error
from scail2.modes import Mode, parse_mode
from scail2.optional import require
from scail2.preprocess.palette import IDENTITY_COLORS

PREFERENCE = FormatSpec(
    "scail2-preference",
    version=1,
    supported=(1,),
    description="a scail2 preference dataset",
    command="prefs",
    settings="source data or animator",
    kind="preference",
)
FORMAT, FORMAT_VERSION, SUPPORTED_VERSIONS = PREFERENCE.name, PREFERENCE.version, PREFERENCE.supported
DEFAULT_SHARD_SIZE = 32  # a model-based build spends minutes per pair; small shards lose little when killed
LOSER_FIELD = "loser_latents"


class Animator(Protocol):
    """G: animate `reference` with the motion of `driving` (uint8 arrays) -> frames [F, H, W, 3] uint8."""

    def __call__(
        self,
        reference: np.ndarray,
        reference_mask: np.ndarray,
        driving: np.ndarray,
        driving_masks: np.ndarray,
        mode: str,
    ) -> np.ndarray: ...


# The words the seeds hash: the spellings preference data was first built with, so every build stays reproducible.
SEED_WORDS = {"animate": b"animation", "replace": b"replacement"}


def call_seed(seed: int, reference: np.ndarray, reference_mask: np.ndarray, mode: str) -> int:
    """A seed keyed on the animator's seed and the reference: the winner and loser calls of one pair share it
    (their driving signals differ, their reference does not), different pairs get different draws."""
    digest = hashlib.blake2b(digest_size=8)
    for part in (
        np.int64(seed).tobytes(),
        SEED_WORDS[parse_mode(mode)],
        np.ascontiguousarray(reference).tobytes(),
        np.ascontiguousarray(reference_mask).tobytes(),
    ):
        digest.update(part)
    return int.from_bytes(digest.digest(), "little") >> 1


def _check_call(reference, reference_mask, driving, driving_masks, mode: str) -> Mode:
    """Raise a one-line Scail2Error on arrays G cannot take; return the mode in the current vocabulary."""
    parsed = parse_mode(mode, "animation mode")
    if driving.ndim != 4 or driving.shape[-1] != 3 or driving.shape[0] < 1:
        raise Scail2Error(f"driving must be uint8 [F, H, W, 3], got {driving.dtype}{list(driving.shape)}")
    size = driving.shape[1:]
    for name, array, shape in (
        ("reference", reference, size),
        ("reference_mask", reference_mask, size),
        ("driving_masks", driving_masks, driving.shape),
        ("driving", driving, driving.shape),
    ):
        if array.dtype != np.uint8 or tuple(array.shape) != tuple(shape):
            raise Scail2Error(f"{name} must be uint8{list(shape)}, got {array.dtype}{list(array.shape)}")
    return parsed


# ------------------------------------------------------------------------------------------------------------
# The weight-free animator: synthesis drift without a model
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftSettings:
    """How far one procedural synthesis drifts; lengths are fractions of the frame height."""

    displacement: float = 0.03  # amplitude of the smooth non-rigid warp of the character (pose / limb jitter)
    wavelength: tuple[float, float] = (0.25, 0.6)  # spatial wavelengths of the warp: limb-sized
    temporal_rate: tuple[float, float] = (0.15, 0.5)  # phase change of the warp per frame [rad]
    blur: float = 0.006  # Gaussian blur of the character (fine detail lost)
    colour: float = 6.0  # standard deviation of the per-video colour offset of the character [0-255 levels]
    waves: int = 4  # plane waves summed per warp axis

    def __post_init__(self):
        if min(self.displacement, self.blur, self.colour) < 0 or self.waves < 1:
            raise Scail2Error("drift displacement, blur and colour must be >= 0 and waves >= 1")
        if not 0 < self.wavelength[0] <= self.wavelength[1] or not 0 <= self.temporal_rate[0] <= self.temporal_rate[1]:
            raise Scail2Error("drift wavelength must be positive (low, high) and temporal_rate a (low, high) range")

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _identity_map(mask: np.ndarray) -> np.ndarray:
    """Palette mask [..., 3] -> identity map [...] (0 background: black, white or any non-identity colour)."""
    rgb = mask.astype(np.int32)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]  # one comparison per colour, not three
    ids = np.zeros(mask.shape[:-1], dtype=np.uint8)
    for identity, (r, g, b) in enumerate(IDENTITY_COLORS, start=1):
        ids[codes == (r << 16) | (g << 8) | b] = identity
    return ids


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [N, C, H, W] with replicated borders."""
    if sigma <= 0.05:
        return images
    radius = max(1, min(int(3 * sigma + 0.5), max(images.shape[-2:]) - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.dtype)
    channels = images.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="replicate"), horizontal, groups=channels)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), vertical, groups=channels)


def _fill_holes(image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """Fill `hole` ([N, 1, H, W] bool) in [N, 3, H, W] by normalised convolution: a smooth background guess.

    The hole grows by a pixel first: anti-aliased outline pixels carry the character's colour but no identity.
    """
    if not bool(hole.any()):
        return image
    hole = F.max_pool2d(hole.float(), 3, stride=1, padding=1) > 0
    known = (~hole).to(image.dtype)
    # The guess is smooth, so it is computed on a grid about 32 cells across and then upsampled.
    size = image.shape[-2:]
    factor = max(1, max(size) // 32)
    weight = _gaussian_blur(F.avg_pool2d(known, factor, ceil_mode=True), max(size) / 6 / factor)
    guess = _gaussian_blur(F.avg_pool2d(image * known, factor, ceil_mode=True), max(size) / 6 / factor)
    weight = F.interpolate(weight, size=size, mode="bilinear", align_corners=False)
    guess = F.interpolate(guess, size=size, mode="bilinear", align_corners=False) / weight.clamp_min(1e-6)
    mean = (image * known).sum(dim=(0, 2, 3)) / known.sum().clamp_min(1.0)  # where nothing known is near
    guess = torch.where(weight > 1e-4, guess, mean.view(1, 3, 1, 1))
    return torch.where(hole, guess, image)


def _recolour(video: np.ndarray, ids: np.ndarray, reference: np.ndarray, ref_ids: np.ndarray) -> np.ndarray:
    """Each driving identity's pixels (float [F, H, W, 3]) moved to the colour mean/std of the same reference
    identity ([H, W, 3], ids [H, W]), or of the whole reference character when that identity is absent."""
    out = video.copy()
    ref_all = reference[ref_ids > 0]  # [N, 3]
    for identity in np.unique(ids):
        if identity == 0:
            continue
        where = ids == identity
        pixels = video[where]  # [N, 3]
        ref_pixels = reference[ref_ids == identity]
        if len(ref_pixels) < 4:
            ref_pixels = ref_all
        if len(ref_pixels) < 4:
            continue  # no reference character at all: keep the driving colours
        scale = np.clip(ref_pixels.std(0) / np.maximum(pixels.std(0), 1.0), 0.25, 4.0)
        out[where] = (pixels - pixels.mean(0)) * scale + ref_pixels.mean(0)
    return out


def _drift_grid(rng: np.random.Generator, frames: int, height: int, width: int, drift: DriftSettings) -> torch.Tensor:
    """Sampling grid [F, H, W, 2] (grid_sample convention) of a smooth, slowly changing displacement field."""
    y, x = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    amplitude = drift.displacement * height / np.sqrt(drift.waves)
    steps = np.arange(frames, dtype=np.float64)[:, None, None]
    fields = []
    for _ in range(2):  # x then y displacement
        total = np.zeros((frames, height, width))
        for _ in range(drift.waves):
            angle = rng.uniform(0, 2 * np.pi)
            wavenumber = 2 * np.pi / (rng.uniform(*drift.wavelength) * height)
            phase = (wavenumber * (np.cos(angle) * x + np.sin(angle) * y))[None] + rng.uniform(0, 2 * np.pi)
            total += amplitude * np.sin(phase + rng.uniform(*drift.temporal_rate) * steps)
        fields.append(total)
    source_x = (x[None] - fields[0] + 0.5) / width * 2 - 1  # backward warp: out(p) = layer(p - d(p))
    source_y = (y[None] - fields[1] + 0.5) / height * 2 - 1
    return torch.from_numpy(np.stack([source_x, source_y], axis=-1)).float()


class ProceduralAnimator:
    """A weight-free G for tests and bootstrapping: recolour, warp, blur and colour-shift the driving character.

    Deterministic: the draws depend only on `seed`, the reference and the mode (see `call_seed`). Not an
    animation model: the output keeps the driving character's shape and motion; only drift is simulated.
    """

    def __init__(self, seed: int = 0, drift: DriftSettings = DriftSettings()):
        self.seed, self.drift = seed, drift

    def describe(self) -> dict:
        return {"animator": "procedural", "seed": self.seed, "drift": self.drift.to_json()}

    def __call__(
        self,
        reference: np.ndarray,
        reference_mask: np.ndarray,
        driving: np.ndarray,
        driving_masks: np.ndarray,
        mode: str,
    ) -> np.ndarray:
        mode = _check_call(reference, reference_mask, driving, driving_masks, mode)
        rng = np.random.default_rng(call_seed(self.seed, reference, reference_mask, mode))
        frames, height, width = driving.shape[:3]
        ids, ref_ids = _identity_map(driving_masks), _identity_map(reference_mask)
        character = _recolour(driving.astype(np.float32), ids, reference.astype(np.float32), ref_ids)
        character += rng.normal(0, self.drift.colour, 3).astype(np.float32)
        character = torch.from_numpy(character).permute(0, 3, 1, 2)  # [F, 3, H, W]
        hole, ref_hole = torch.from_numpy(ids > 0)[:, None], torch.from_numpy(ref_ids > 0)[None, None]
        alpha = hole.float()  # [F, 1, H, W]
        if mode == "animate":  # the reference's own scene, the reference character removed
            image = torch.from_numpy(reference.astype(np.float32)).permute(2, 0, 1)[None]  # [1, 3, H, W]
            background = _fill_holes(image, ref_hole).expand(frames, -1, -1, -1)
        else:  # the driving scene, the driving character removed
            background = _fill_holes(torch.from_numpy(driving.astype(np.float32)).permute(0, 3, 1, 2), hole)
        layer = torch.cat([character * alpha, alpha], dim=1)  # premultiplied colour + coverage
        grid = _drift_grid(rng, frames, height, width, self.drift)
        layer = F.grid_sample(layer, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        layer = _gaussian_blur(layer, self.drift.blur * height)
        coverage = layer[:, 3:].clamp(0, 1)
        out = background * (1 - coverage) + layer[:, :3]
        return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


# ------------------------------------------------------------------------------------------------------------
# The model animator
# ------------------------------------------------------------------------------------------------------------


class PipelineAnimator:
    """G from a `SCAIL2Pipeline`: one generation per call with fixed sampling settings and a reference-keyed seed."""

    def __init__(
        self,
        pipeline,
        settings,
        seed: int = 0,
        prompt: str = "",
        autocast_dtype: torch.dtype | None = None,
        name: str = "scail2",
    ):
        self.pipeline, self.settings = pipeline, settings  # settings: a pipelines.SamplingSettings
        self.seed, self.prompt, self.autocast_dtype, self.name = seed, prompt, autocast_dtype, name

    def describe(self) -> dict:
        return {
            "animator": "pipeline",
            "name": self.name,
            "seed": self.seed,
            "prompt": self.prompt,
            "settings": dataclasses.asdict(self.settings),
            "transformer": dict(self.pipeline.transformer.config),
        }

    def __call__(
        self,
        reference: np.ndarray,
        reference_mask: np.ndarray,
        driving: np.ndarray,
        driving_masks: np.ndarray,
        mode: str,
    ) -> np.ndarray:
        mode = _check_call(reference, reference_mask, driving, driving_masks, mode)
        inputs = AnimationInputs.from_arrays(reference, reference_mask, driving, driving_masks, mode, self.prompt)
        result = self.pipeline(
            inputs,
            self.settings,
            seed=call_seed(self.seed, reference, reference_mask, mode),
            autocast_dtype=self.autocast_dtype,
            progress=False,
        )
        return result.frames.cpu().numpy()


def describe_animator(animate: Animator) -> dict:
    describe = getattr(animate, "describe", None)
    if callable(describe):
        return describe()
    return {"animator": f"{type(animate).__module__}.{getattr(animate, '__qualname__', type(animate).__qualname__)}"}


# ------------------------------------------------------------------------------------------------------------
# Building pairs
# ------------------------------------------------------------------------------------------------------------


@dataclass
class PreferenceSample:
    pair: PairSample  # the source conditions; `target` is the winner (ids and detail: the source target's)
    loser: np.ndarray  # [F, H, W, 3] uint8
    info: dict  # source key, re-synthesis frame, drift statistics


def best_visible_frame(ids: np.ndarray) -> int:
    """The frame where the characters cover the most pixels (the first on ties): R_d for re-synthesis."""
    return int(np.argmax((ids > 0).reshape(len(ids), -1).sum(axis=1)))


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


class PreferencePairBuilder:
    """Winner G(R, d) and bias-aware loser G(R, G(R_d, d)) for each source pair."""

    def __init__(self, animate: Animator):
        self.animate = animate

    def _call(self, sample: PairSample, what: str, *args) -> np.ndarray:
        frames = np.asarray(self.animate(*args))
        if frames.dtype != np.uint8 or frames.shape != sample.driving.shape:
            raise Scail2Error(
                f"sample {sample.key}: the animator returned {frames.dtype}{list(frames.shape)} for the "
                f"{what}; it must return uint8{list(sample.driving.shape)} (one frame per driving frame)"
            )
        return frames

    def build(self, sample: PairSample) -> PreferenceSample:
        sample.check()
        mode, reference_mask, driving_mask = sample.mode, sample.reference_mask(), sample.driving_mask()
        frame = best_visible_frame(sample.driving_ids)
        own_mask = palette_mask(sample.driving_ids[frame], MASK_BACKGROUNDS["replace"]["reference"])
        scene_masks = palette_mask(sample.driving_ids, MASK_BACKGROUNDS["replace"]["driving"])
        resynthesised = self._call(
            sample,
            "re-synthesised driving video",
            sample.driving[frame],
            own_mask,
            sample.driving,
            scene_masks,
            "replace",
        )
        winner = self._call(sample, "winner", sample.reference, reference_mask, sample.driving, driving_mask, mode)
        loser = self._call(sample, "loser", sample.reference, reference_mask, resynthesised, driving_mask, mode)
        info = PREFERENCE.header(
            source_key=sample.key,
            resynthesis_frame=frame,
            driving_drift=_mean_abs(resynthesised, sample.driving),
            winner_error=_mean_abs(winner, sample.target),
            loser_error=_mean_abs(loser, sample.target),
            winner_loser_difference=_mean_abs(winner, loser),
        )
        return PreferenceSample(dataclasses.replace(sample, target=winner), loser, info)


# ------------------------------------------------------------------------------------------------------------
# One sample <-> tar members
# ------------------------------------------------------------------------------------------------------------


def encode_preference_sample(sample: PreferenceSample) -> dict[str, bytes]:
    """The MotionPair members of the pair, plus `loser.png` and `preference.json`."""
    record = encode_sample(sample.pair)
    frames, height, width = sample.loser.shape[:3]
    record["loser.png"] = encode_png(np.ascontiguousarray(sample.loser).reshape(frames * height, width, 3))
    record["preference.json"] = json.dumps(sample.info, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return record


def decode_preference_sample(record: dict, source: str = "sample") -> PreferenceSample:
    where = f"{source} (sample {record.get('__key__', '?')})"
    if "preference.json" not in record or "loser.png" not in record:
        raise Scail2Error(
            f"{where} has no loser: it is a plain MotionPair sample, not a preference pair; build "
            "preference data with write_preference_dataset"
        )
    info = decode_json_member(record["preference.json"], where, "preference.json", PREFERENCE)
    pair = decode_sample(record, source)
    frames, height, width = pair.driving.shape[:3]
    loser = decode_png(record["loser.png"], "RGB", (frames * height, width, 3), f"{where} loser.png")
    return PreferenceSample(pair, loser.reshape(frames, height, width, 3), info)


# ------------------------------------------------------------------------------------------------------------
# Writing and reading a preference dataset
# ------------------------------------------------------------------------------------------------------------


def _source_samples(source: MotionPairDataset, indices: list[int]) -> Iterator[PairSample]:
    """The source pairs with these (ascending) indices, in order, reading only the shards that hold them."""
    wanted = set(indices)
    for entry in source.manifest["shards"]:
        first, count = entry.get("first_index", 0), entry["count"]
        if wanted.isdisjoint(range(first, first + count)):
            continue
        for index, sample in enumerate(read_shard(source.directory / entry["name"], count), start=first):
            if index in wanted:
                yield sample


def write_preference_dataset(
    source_dir: str | Path,
    out_dir: str | Path,
    animate: Animator,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    num_pairs: int | None = None,
    shard_index: int | None = 0,
    num_shards: int | None = 1,
    progress: bool = True,
) -> WriteReport:
    """Build preference pairs for the first `num_pairs` (default all) pairs of a MotionPair dataset.

    Resumable: whole shards only, skipped when present; `shard_index/num_shards` (None/None: RANK/WORLD_SIZE)
    split the shards between processes. Returns what was done; `complete` once the manifest is written.
    """
    source = MotionPairDataset(source_dir, verify=False)
    total = len(source) if num_pairs is None else num_pairs
    if shard_size < 1 or not 1 <= total <= len(source):
        raise Scail2Error(
            f"need shard_size >= 1 and 1 <= num_pairs <= {len(source)} (the source's pairs); got "
            f"{shard_size} and {num_pairs}"
        )
    index, count = resolve_sharding(shard_index, num_shards)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = PREFERENCE.header(
        num_pairs=total,
        shard_size=shard_size,
        num_shards=-(-total // shard_size),
        animator=describe_animator(animate),
        source={"path": str(Path(source_dir).resolve()), "meta": source.meta},
        members={
            "motionpair": "every member of a scail2-motionpair sample; target = the winner",
            "loser.png": "RGB, frames stacked vertically",
            "preference.json": "format, version, drift",
        },
    )
    builder = PreferencePairBuilder(animate)

    def records(indices: list[int]) -> Iterator[dict]:
        return (encode_preference_sample(builder.build(sample)) for sample in _source_samples(source, indices))

    return write_shards(
        out, PREFERENCE, meta, records, shard_index=index, num_shards=count, progress=progress, desc="preference"
    )


def read_preference_shard(path: str | Path, expected_count: int | None = None) -> Iterator[PreferenceSample]:
    """Decode every preference pair of one shard, refusing foreign, corrupt or truncated shards."""
    return read_shard(path, expected_count, decode=decode_preference_sample)


class PreferenceDataset(MotionPairDataset):
    """A finished preference dataset: checks meta.json, the manifest and (with `verify`) shard checksums.
    Iterating yields `PreferenceSample`s."""

    spec = PREFERENCE
    decode = staticmethod(decode_preference_sample)


# ------------------------------------------------------------------------------------------------------------
# The preference latent cache
# ------------------------------------------------------------------------------------------------------------


def _shard_losers(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(key, loser frames) of a preference shard in tar order, decoding only the loser and the headers."""
    webdataset = require("webdataset", purpose="dataset shards")

    for record in webdataset.WebDataset(str(path), shardshuffle=False, empty_check=False):
        where = f"{path} (sample {record.get('__key__', '?')})"
        if "preference.json" not in record or "loser.png" not in record or "json" not in record:
            raise Scail2Error(f"{where} has no loser; rebuild the preference data with write_preference_dataset")
        decode_json_member(record["preference.json"], where, "preference.json", PREFERENCE)
        header = decode_json_member(record["json"], where)
        frames, height, width = header["frames"], header["height"], header["width"]
        loser = decode_png(record["loser.png"], "RGB", (frames * height, width, 3), f"{where} loser.png")
        yield header["key"], loser.reshape(frames, height, width, 3)


class _EncoderWithLosers:
    """The CacheEncoder as `latent_cache.cache_shard` calls it, adding `loser_latents` to every record.

    cache_shard reads the shard's MotionPair members (its target = the winner); the losers stream from the
    same shard in the same order, so one record's loser is never far away in memory.
    """

    def __init__(self, encoder: latent_cache.CacheEncoder, shard: Path):
        self.encoder, self.shard = encoder, shard
        self._losers = _shard_losers(shard)

    def encode(self, sample: PairSample) -> dict[str, torch.Tensor]:
        key, loser = next(self._losers, (None, None))
        if key != sample.key:
            raise Scail2Error(
                f"{self.shard}: the loser of sample {sample.key} is missing or out of order; the shard "
                "is corrupt: delete it and rebuild the preference data"
            )
        record = self.encoder.encode(sample)
        with torch.no_grad():
            latents = encode_video(self.encoder.codec, torch.from_numpy(np.array(loser)))[0]
        record[LOSER_FIELD] = latents.detach().to("cpu", self.encoder.dtype).contiguous()
        return record


def build_preference_cache(
    data_dir: str | Path,
    out_dir: str | Path,
    encoder: latent_cache.CacheEncoder,
    shard_index: int | None = None,
    num_shards: int | None = None,
    progress: bool = True,
) -> bool:
    """Encode a preference dataset into a latent cache with `loser_latents`; True once the manifest is written.

    Same layout, resuming and sharding as `latent_cache.build_cache`; meta.json adds a `preference` entry.
    """
    dataset = PreferenceDataset(data_dir, verify=False)
    return latent_cache.cache_dataset(
        dataset,
        out_dir,
        encoder,
        extra_meta={"preference": PREFERENCE.header(loser_field=LOSER_FIELD)},
        shard_encoder=_EncoderWithLosers,
        shard_index=shard_index,
        num_shards=num_shards,
        progress=progress,
    )


def check_preference_cache(cache: latent_cache.LatentCache) -> None:
    """Raise a one-line Scail2Error unless `cache` was written by build_preference_cache (the DPO stage's input)."""
    entry = cache.meta.get("preference")
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        raise Scail2Error(
            f"{cache.directory} is a latent cache without losers; the dpo stage needs one built by "
            f"build_preference_cache from preference pairs (write_preference_dataset)"
        )
    PREFERENCE.check_header(entry, f"{cache.directory / 'meta.json'} (its preference entry)")
