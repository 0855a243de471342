"""The latent cache: every MotionPair sample encoded once (VAE, and text/image encoders when present).

Layout of a cache folder (format `scail2-latent-cache`, version 2; version 1 is still read):

    meta.json                 format, version, source dataset, encoders, text length, storage dtype (and
                              `encoders.driving_scale` when the driving stream is not at half resolution,
                              `encoders.driving_signal` when its latents are not of the frames themselves)
    null_text.safetensors     the empty prompt's embedding (text dropout), when there is a text encoder
    cache-00000.tar ...       one tar per source shard: `<key>.safetensors` (tensors) + `<key>.json` (task, mode)
    cache-00000.json ...      per-shard completion records (count, bytes, sha256, member offsets)
    manifest.json             written when every shard is done: the records together

Tensors of one sample (z latent channels, T latent frames, h x w latent grid):
    target_latents [z, T, h, w]      ref_latents [z, 1, h, w]       ref_masks [28, 1, h, w]
    pose_latents   [z, T, h/2, w/2]  driving_masks [28, T, h/2, w/2]   ([*, T, h, w] at driving_scale 1)
    detail_masks   [2, T, h, w]      fraction of limb-end (0) and face/head (1) pixels per latent cell
    target_masks   [1, T, h, w]      fraction of character pixels per latent cell (foreground loss weight);
                                     always there from version 2 on, possibly missing in version 1 caches
    text_embeds    [L, text_dim]     image_embeds [N, image_dim]    (only with those encoders)

Each shard is written under a temporary name and renamed when complete, so a killed run resumes at the first
unfinished shard; `--shard-index/--num-shards` (or RANK/WORLD_SIZE) split the shards between machines. Member
offsets make every sample readable by random access, which gives the trainer a deterministic order.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from scail2.conditioning import (
    VideoLatentCodec,
    check_driving_scale,
    check_driving_signal,
    compress_driving_masks,
    compress_reference_mask,
    detail_to_latent,
    encode_driving,
    encode_video,
    mask_to_latent,
)
from scail2.data.format import (
    FormatSpec,
    atomic_path,
    atomic_write_bytes,
    read_json,
    shard_record,
    write_json_atomic,
)
from scail2.data.pairs import DRIVING_SOURCES, driving_condition
from scail2.errors import Scail2Error
from scail2.modes import Mode, parse_mode

if TYPE_CHECKING:
    from scail2.data.shards import MotionPairDataset

# Version 2 added target_masks to every record; version 1 caches may lack it (readers of it must cope).
LATENT_CACHE = FormatSpec(
    "scail2-latent-cache",
    version=2,
    supported=(1, 2),
    description="a scail2 latent cache",
    command="cache",
    settings="data or encoders",
    kind="cache",
)
FORMAT, FORMAT_VERSION, SUPPORTED_VERSIONS = LATENT_CACHE.name, LATENT_CACHE.version, LATENT_CACHE.supported
TENSOR_FIELDS = (
    "target_latents",
    "ref_latents",
    "ref_masks",
    "pose_latents",
    "driving_masks",
    "detail_masks",
    "target_masks",
)
OPTIONAL_FIELDS = ("text_embeds", "image_embeds")  # with those encoders
NULL_TEXT_FILE = "null_text.safetensors"


def caption_for(metadata: dict) -> str:
    """A short description of the target video from procedural metadata ("a quadruped runs; a bird waves")."""
    characters = metadata.get("characters") or []
    parts = [
        f"a {c['reference']['plan']} doing {c['motion']['kind']}"
        for c in characters
        if "reference" in c and "motion" in c
    ]
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------------------------
# Encoding
# ------------------------------------------------------------------------------------------------------------


class CacheEncoder:
    """Encodes PairSamples with the VAE and, when given, the text and image encoders."""

    def __init__(
        self,
        vae,
        text_encoder=None,
        tokenizer=None,
        image_encoder=None,
        text_len: int = 512,
        dtype: torch.dtype = torch.float32,
        driving: str = "frames",
        driving_scale: int = 2,
        driving_signal: str = "frames",
    ):
        if driving not in DRIVING_SOURCES:
            raise Scail2Error(f"unknown driving source {driving!r}; choose from {', '.join(DRIVING_SOURCES)}")
        self.driving, self.driving_scale = driving, check_driving_scale(driving_scale)
        self.driving_signal = check_driving_signal(driving_signal)
        self.codec = VideoLatentCodec(vae)
        self.text_encoder, self.tokenizer, self.image_encoder = text_encoder, tokenizer, image_encoder
        self.text_len, self.dtype = text_len, dtype

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        device: str = "cpu",
        text_len: int = 512,
        dtype: torch.dtype = torch.float32,
        driving: str = "frames",
        driving_scale: int | None = None,
        driving_signal: str | None = None,
    ) -> CacheEncoder:
        """Components of a model folder: `vae/` is required; text_encoder/, tokenizer/, image_encoder/ are used
        when present. `driving_scale` / `driving_signal` None: the folder's transformer's (`model_driving`)."""
        from diffusers import AutoencoderKLWan

        root = Path(model_dir)
        if not (root / "vae").is_dir():
            raise Scail2Error(
                f"{root}: no vae/ folder; pass a model folder written by `scail2 convert all`, "
                "`scail2 train` or `SCAIL2Pipeline.save_pretrained`"
            )
        vae = AutoencoderKLWan.from_pretrained(root / "vae").to(device).eval()
        text_encoder = tokenizer = image_encoder = None
        if (root / "text_encoder").is_dir():
            from transformers import AutoTokenizer, UMT5EncoderModel

            text_encoder = UMT5EncoderModel.from_pretrained(root / "text_encoder").to(device).eval()
            tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
        if (root / "image_encoder").is_dir():
            from transformers import CLIPVisionModel

            image_encoder = CLIPVisionModel.from_pretrained(root / "image_encoder").to(device).eval()
        folder_scale, folder_signal = model_driving(root)
        return cls(
            vae,
            text_encoder,
            tokenizer,
            image_encoder,
            text_len=text_len,
            dtype=dtype,
            driving=driving,
            driving_scale=folder_scale if driving_scale is None else driving_scale,
            driving_signal=folder_signal if driving_signal is None else driving_signal,
        )

    def describe(self) -> dict:
        described = {
            "text_encoder": self.text_encoder is not None,
            "image_encoder": self.image_encoder is not None,
            "text_len": self.text_len,
            "dtype": str(self.dtype).removeprefix("torch."),
        }
        if self.driving != "frames":  # caches of driving frames keep their original description
            described["driving"] = self.driving
        if self.driving_scale != 2:  # likewise caches at SCAIL-2's half resolution
            described["driving_scale"] = self.driving_scale
        if self.driving_signal != "frames":
            described["driving_signal"] = self.driving_signal
        return described

    def encode_text(self, prompts: list[str]) -> list[torch.Tensor]:
        from scail2.models.encoders import encode_prompts

        return [t.float().cpu() for t in encode_prompts(self.text_encoder, self.tokenizer, prompts, self.text_len)]

    @torch.no_grad()
    def encode(self, sample) -> dict[str, torch.Tensor]:
        """One PairSample -> the tensors of its cache record."""
        from scail2.models.encoders import clip_image_features, clip_pixel_values
        from scail2.preprocess.resize import image_to_model

        height, width = sample.reference.shape[:2]
        reference = image_to_model(sample.reference, (height, width))
        ref_mask = image_to_model(sample.reference_mask(), (height, width))
        target = encode_video(self.codec, torch.from_numpy(sample.target.copy()))[0]
        driving, driving_mask = driving_condition(sample, self.driving)
        masks = torch.from_numpy(np.array(driving_mask))
        record = {
            "target_latents": target,
            "ref_latents": self.codec.encode(reference[None, :, None])[0],
            "ref_masks": compress_reference_mask(ref_mask)[0],
            "pose_latents": encode_driving(
                self.codec,
                torch.from_numpy(np.array(driving)),
                self.driving_scale,
                self.driving_signal,
                masks,
                sample.mode,
            )[0],
            "driving_masks": compress_driving_masks(masks, self.driving_scale)[0],
            "detail_masks": detail_to_latent(sample.target_detail, tuple(target.shape[-2:])),
            "target_masks": mask_to_latent(sample.target_ids, tuple(target.shape[-2:])),
        }
        if self.text_encoder is not None:
            record["text_embeds"] = self.encode_text([caption_for(sample.metadata)])[0]
        if self.image_encoder is not None:
            pixels = clip_pixel_values(reference, size=self.image_encoder.config.image_size)
            record["image_embeds"] = clip_image_features(self.image_encoder, pixels)[0].float()
        return {
            k: v.detach()
            .to("cpu", self.dtype if k not in ("detail_masks", "target_masks") else torch.float32)
            .contiguous()
            for k, v in record.items()
        }


def model_driving(model_dir: str | Path) -> tuple[int, str]:
    """The `driving_scale` and `driving_signal` of a model folder's transformer (2 and "frames", SCAIL-2's, when
    the folder has no transformer/ or its config predates the fields)."""
    path = Path(model_dir) / "transformer" / "config.json"
    if not path.is_file():
        return 2, "frames"
    config = read_json(path, missing_hint="", corrupt_hint="convert the model folder again")
    return int(config.get("driving_scale", 2)), str(config.get("driving_signal", "frames"))


def check_cache_driving_signal(cache_signal: str, model_signal: str) -> None:
    """Refuse, in one line, a cache whose driving latents encode another signal than the model reads (the
    record's shapes cannot tell: meta.json's `encoders.driving_signal` does)."""
    if cache_signal != model_signal:
        raise Scail2Error(
            f"the cache's driving latents are of the {cache_signal!r} signal (meta.json encoders.driving_signal) but "
            f"the model reads {model_signal!r}; re-cache with `scail2 cache --driving-signal {model_signal}` or set "
            f"model.overrides.driving_signal={cache_signal}"
        )


def check_cache_driving_scale(tensors: dict[str, torch.Tensor], model_scale: int, injection: str = "append") -> None:
    """Refuse, in one line, a cache record whose driving latents are not at the model's `driving_scale`: the
    record's own shapes say which scale it was encoded at, so every cache version is checked alike."""
    (height, width), (pose_h, pose_w) = tensors["target_latents"].shape[-2:], tensors["pose_latents"].shape[-2:]
    if (pose_h * model_scale, pose_w * model_scale) != (height, width):
        cached = height // max(1, pose_h)
        # an added driving stream exists only at scale 1, so the model cannot follow the cache there
        other = "" if injection == "add" else f" or set model.overrides.driving_scale={cached}"
        raise Scail2Error(
            f"the cache's driving latents are {pose_h}x{pose_w} for a {height}x{width} video latent (driving_scale "
            f"{cached}, meta.json encoders.driving_scale) but the model's driving_scale is {model_scale}; re-cache "
            f"with `scail2 cache --driving-scale {model_scale}`{other}"
        )


# ------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedSample:
    key: str
    task: str
    mode: Mode
    tensors: dict[str, torch.Tensor]

    @property
    def replace(self) -> bool:
        return self.mode == "replace"


class LatentCache:
    """Random access to a finished cache: `cache[i]` -> CachedSample, in manifest order.

    `version` is the cache's format version; records of version 1 caches may lack `target_masks`.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.meta, manifest = LATENT_CACHE.open_finished(self.directory, verify=False)
        self.version = int(self.meta["version"])
        self.entries = [(shard["name"], member) for shard in manifest["shards"] for member in shard["members"]]
        self.shapes = [tuple(member["shape"]) for _, member in self.entries]  # target latent shape per sample
        null_text = self.directory / NULL_TEXT_FILE
        self.null_text = load_tensors(null_text.read_bytes())["text_embeds"] if null_text.exists() else None

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def parts(self) -> list[LatentCache]:
        """The cache folders it reads: itself (a LatentCacheMixture has several)."""
        return [self]

    @property
    def driving_scale(self) -> int:
        """The resolution divisor its driving latents and masks were encoded at (2: half; older caches are 2)."""
        return int(self.meta.get("encoders", {}).get("driving_scale", 2))

    @property
    def driving_signal(self) -> str:
        """What its driving latents encode: "frames" (older caches too) or "pose_cue"."""
        return str(self.meta.get("encoders", {}).get("driving_signal", "frames"))

    def _read(self, shard: str, offset: int, size: int) -> bytes:
        path = self.directory / shard
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read(size)
        if len(data) != size:
            raise Scail2Error(f"{path} is truncated; rebuild the cache shard with `scail2 cache`")
        return data

    def __getitem__(self, index: int) -> CachedSample:
        shard, member = self.entries[index]
        info = json.loads(self._read(shard, *member["info"]))
        tensors = load_tensors(self._read(shard, *member["tensors"]))
        return CachedSample(
            key=member["key"],
            task=info["task"],
            mode=parse_mode(info["mode"], f"{shard} {member['key']} mode"),
            tensors=tensors,
        )  # v1: older words


class LatentCacheMixture:
    """Several finished caches read as one training set (a data mixture, e.g. two worlds): `mixture[i]` walks the
    folders in the order given, each in manifest order, so every sample is as likely as any other.

    The caches must have been encoded alike (meta.json's `encoders`: driving scale and signal, text and image
    encoders, text length, storage dtype); the first folder's null text serves all of them.
    """

    def __init__(self, directories: Sequence[str | Path]):
        self.parts = [LatentCache(directory) for directory in directories]
        first = self.parts[0]
        first_encoders, first_channels = first.meta.get("encoders", {}), _record_channels(first)
        for part in self.parts[1:]:
            encoders = part.meta.get("encoders", {})
            differing = sorted(k for k in {*first_encoders, *encoders} if first_encoders.get(k) != encoders.get(k))
            if differing:
                raise Scail2Error(
                    f"--data {part.directory} was encoded unlike --data {first.directory} "
                    f"(meta.json encoders differ in {', '.join(differing)}); re-run `scail2 cache` on one of them "
                    "with the other's settings"
                )
            channels = _record_channels(part)
            if channels != first_channels:
                differing = sorted({name for name, _ in set(channels.items()) ^ set(first_channels.items())})
                raise Scail2Error(
                    f"--data {part.directory} holds other tensors than --data {first.directory} "
                    f"({', '.join(differing)} differ: another VAE or encoder made it); "
                    "re-run `scail2 cache` on one of them with the other's --model"
                )
        # What the trainer reads of its data; the encoders agree, so the first folder's stand for all.
        self.meta, self.null_text, self.driving_signal = first.meta, first.null_text, first.driving_signal
        self.entries = [(part, index) for part in self.parts for index in range(len(part))]
        self.shapes = [shape for part in self.parts for shape in part.shapes]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> CachedSample:
        part, local = self.entries[index]
        return part[local]


def _record_channels(cache: LatentCache) -> dict[str, int]:
    """What a cache's encoders fix in its first record: each tensor's channels (the first axis of a video tensor,
    the feature width of an embedding); frames and grid may differ between caches."""
    tensors = cache[0].tensors
    channels = {name: int(t.shape[0] if t.ndim == 4 else t.shape[-1]) for name, t in tensors.items()}
    if cache.null_text is not None:
        channels["null_text"] = int(cache.null_text.shape[-1])
    return channels


def open_latent_caches(directories: str | Path | Sequence[str | Path]) -> LatentCache | LatentCacheMixture:
    """A training set: one cache folder, or a mixture of several encoded alike."""
    if isinstance(directories, (str, Path)):
        return LatentCache(directories)
    directories = list(directories)
    if not directories:
        raise Scail2Error("--data: give at least one cache folder written by `scail2 cache`")
    return LatentCache(directories[0]) if len(directories) == 1 else LatentCacheMixture(directories)


# ------------------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------------------


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> tuple[int, int]:
    """Append a file; returns (offset of its data in the tar, size) for random access."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    data_offset = tar.offset + len(info.tobuf(tar.format, tar.encoding, tar.errors))
    tar.addfile(info, io.BytesIO(data))
    return data_offset, len(data)


def cache_shard(encoder: CacheEncoder, source_shard: Path, out: Path, progress=None) -> dict:
    """Encode one source shard into `out` (atomically) and return its completion record."""
    from scail2.data.shards import read_shard

    members = []
    with atomic_path(out) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in read_shard(source_shard):
            encoded = encoder.encode(sample)
            info = json.dumps({"key": sample.key, "task": sample.task, "mode": sample.mode}).encode()
            members.append(
                {
                    "key": sample.key,
                    "mode": sample.mode,
                    "shape": list(encoded["target_latents"].shape),
                    "tensors": _add_member(tar, f"{sample.key}.safetensors", save_tensors(encoded)),
                    "info": _add_member(tar, f"{sample.key}.json", info),
                }
            )
            if progress is not None:
                progress.update(1)
    return shard_record(out, source=source_shard.name, count=len(members), members=members)


def build_cache(
    data_dir: str | Path,
    out_dir: str | Path,
    encoder: CacheEncoder,
    shard_index: int | None = None,
    num_shards: int | None = None,
    progress: bool = True,
) -> bool:
    """Encode a synthesised dataset; returns True when the whole cache (manifest included) is complete."""
    from scail2.data.shards import MotionPairDataset

    return cache_dataset(
        MotionPairDataset(data_dir, verify=False),
        out_dir,
        encoder,
        shard_index=shard_index,
        num_shards=num_shards,
        progress=progress,
    )


def cache_dataset(
    dataset: MotionPairDataset,
    out_dir: str | Path,
    encoder: CacheEncoder,
    *,
    extra_meta: dict | None = None,
    shard_encoder: Callable[[CacheEncoder, Path], object] | None = None,
    shard_index: int | None = None,
    num_shards: int | None = None,
    progress: bool = True,
) -> bool:
    """Encode the shards of a finished `MotionPairDataset` (or a dataset laid out like one) into a cache.

    Resumable (finished shards have a completion record and are skipped) and shardable (`shard_index/num_shards`,
    None/None: RANK/WORLD_SIZE). `extra_meta` joins meta.json; `shard_encoder(encoder, source_shard)`, when
    given, returns the encoder of one shard. True once the manifest is written.
    """
    from tqdm import tqdm

    from scail2.data.shards import resolve_sharding

    index, count = resolve_sharding(shard_index, num_shards)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    LATENT_CACHE.claim_folder(
        out,
        LATENT_CACHE.header(
            source=str(dataset.directory.resolve()),
            source_meta=dataset.meta,
            encoders=encoder.describe(),
            **(extra_meta or {}),
        ),
    )
    if encoder.text_encoder is not None and not (out / NULL_TEXT_FILE).exists():
        null_text = encoder.encode_text([""])[0].contiguous()
        atomic_write_bytes(out / NULL_TEXT_FILE, save_tensors({"text_embeds": null_text}))
    entries = dataset.manifest["shards"]
    todo = [i for i in range(len(entries)) if i % count == index and not (out / _record_name(i)).exists()]
    with tqdm(total=sum(entries[i]["count"] for i in todo), disable=not progress, unit="pair", desc="cache") as bar:
        for i in todo:
            source = dataset.directory / entries[i]["name"]
            shard_input = encoder if shard_encoder is None else shard_encoder(encoder, source)
            record = cache_shard(shard_input, source, out / f"cache-{i:05d}.tar", progress=bar)
            write_json_atomic(out / _record_name(i), record)
    return finish_manifest(out, len(entries))


def _record_name(shard: int) -> str:
    return f"cache-{shard:05d}.json"


def finish_manifest(out: Path, num_source_shards: int) -> bool:
    records = [out / _record_name(i) for i in range(num_source_shards)]
    if not all(path.exists() for path in records):
        return False
    shards = [LATENT_CACHE.read_json(path) for path in records]
    LATENT_CACHE.write_manifest(out, shards, num_samples=sum(s["count"] for s in shards))
    return True
